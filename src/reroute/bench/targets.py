"""The benchmark's targets (efficiency against the FLOPs limit, stage-wise against per-layer,
routing overhead, batch throughput), each with the measured value and whether it holds."""

from __future__ import annotations

from typing import Any


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it holds."""
    targets = []
    rows = {r["name"]: r for r in result.get("latency", [])}
    tiers = [r["tier"] for r in rows.values() if r["tier"] is not None]
    if rows and tiers:
        low = min(tiers)
        stage = rows[f"reroute stage-wise @{low:g}"]
        targets.append({"target": f"reroute stage-wise @{low:g}: prefill speedup >= 0.9 x theoretical",
                        "value": stage["efficiency"], "best_of": stage["efficiency_min"],
                        "holds": stage["efficiency"] >= 0.9})  # fmt: skip
        for method in ("fastv", "pdrop"):
            r = rows[f"{method} remove @{low:g}"]
            targets.append({"target": f"{method} remove @{low:g}: prefill speedup >= 0.9 x theoretical",
                            "value": r["efficiency"], "best_of": r["efficiency_min"],
                            "holds": r["efficiency"] >= 0.9})  # fmt: skip
        for tier in sorted(set(tiers), reverse=True):
            s, p = rows[f"reroute stage-wise @{tier:g}"], rows[f"reroute per-layer @{tier:g}"]
            targets.append({"target": f"@{tier:g}: stage-wise prefill faster than per-layer (per-layer / stage-wise ms)",
                            "value": p["prefill_ms"] / s["prefill_ms"], "holds": s["prefill_ms"] < p["prefill_ms"]})  # fmt: skip
    execution = result.get("execution")
    if execution:
        ratio = execution["per_layer_over_stagewise"]
        targets.append({"target": f"stage-wise faster than per-layer, decoder time in {execution['pairs']} back-to-back "
                                  f"pairs (median per-layer / stage-wise; stage-wise won {execution['stagewise_wins']})",
                        "value": ratio, "holds": ratio > 1})  # fmt: skip
    if "reroute keep=1.0" in rows:
        o = rows["reroute keep=1.0"]["overhead"]
        targets.append({"target": "routing overhead at keep ratio 1.0 <= 3 %", "value": o,
                        "best_of": rows["reroute keep=1.0"]["overhead_min"], "holds": o <= 0.03})  # fmt: skip
    batch = result.get("batch", [])
    if batch:
        largest = max(r["batch"] for r in batch)
        for r in batch:
            if r["batch"] == largest and largest >= 8:
                targets.append({"target": f"{r['name']}: batch {largest} throughput >= 2 x batch 1",
                                "value": r["throughput_vs_batch1"], "holds": r["throughput_vs_batch1"] >= 2})  # fmt: skip
    return targets
