"""The benchmark's output: the text report, the JSON file and the figure."""

from __future__ import annotations

import json
import math
from typing import Any

from reroute.bench.measure import MiB

# --------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------


def _mib(n: float) -> str:
    return f"{n / MiB:.1f}"


def format_report(result: dict[str, Any]) -> str:
    lines = [
        f"reroute bench: {result['shape']['description']}",
        f"device {result['device']} ({result['device_name']}), {result['dtype']}, threads={result['threads']}, "
        f"torch {result['torch']}, malloc tuned: {result['malloc_tuned']}",
        f"prompt: {result['prompt']['length']} tokens ({result['prompt']['visual_tokens']} visual); "
        f"vision tower + projector {result['vision_tower_ms']:.1f} ms; {result['ratios_note']}",
    ]
    if "latency" in result:
        lines += [
            "",
            "Prefill (one forward, as generate runs it) and decode (generate, per token), medians. theory = decoder FLOPs",
            "speedup by the paper formula 4nd^2+2n^2d+2ndm over the traced per-layer tokens (exact: every matmul, causal",
            "attention); eff = prefill speedup / theory; 'decoder' = time inside the text model (no vision tower, no lm_head);",
            "dec eff = decoder speedup / theory, and / exact",
        ]
        header = (
            f"{'configuration':<27} {'avg_T':>5} {'prefill ms':>10} {'speedup':>7} {'decoder ms':>10} {'speedup':>7} "
            f"{'theory':>6} {'exact':>6} {'eff':>5} {'dec eff':>7} {'exact':>5} {'decode ms/tok':>13} {'peak MiB':>8} {'KV MiB':>6}"
        )
        lines += [header, "-" * len(header)]
        for r in result["latency"]:
            lines.append(
                f"{r['name']:<27} {r['avg_T']:>5.1f} {r['prefill_ms']:>10.1f} {r['prefill_speedup']:>6.2f}x "
                f"{r['decoder_ms']:>10.1f} {r['decoder_speedup']:>6.2f}x {r['flops_speedup']:>5.2f}x "
                f"{r['flops_speedup_exact_causal']:>5.2f}x {r['efficiency']:>5.2f} {r['decoder_efficiency']:>7.2f} "
                f"{r['decoder_efficiency_exact']:>5.2f} "
                f"{r['decode_ms_per_token']:>13.2f} {_mib(r['peak_bytes']):>8} {_mib(r['kv_cache_bytes']):>6}"
            )
        lines.append(
            "peak = bytes torch allocated during the prefill above the level before it (CPU: profiler allocation events); "
            "KV = the cache's tensors after prefill"
        )
    if "execution" in result:
        e = result["execution"]
        lines.append(
            f"stage-wise vs per-layer ({e['stagewise'].split('@')[-1]}), {e['pairs']} back-to-back pairs of decoder times: "
            f"per-layer / stage-wise = {e['per_layer_over_stagewise']:.4f} (median), stage-wise faster in "
            f"{e['stagewise_wins']}/{e['pairs']}"
        )
        for name, m in e["data_movement"].items():
            lines.append(
                f"  {name}: Layout.gather/scatter_ {m['calls']} calls, {_mib(m['bytes'])} MiB written, {m['ms']:.1f} ms"
            )
    if "scaling" in result:
        lines += ["", "Scaling with visual tokens (several 576-token images; keep ratios of the lowest tier)"]
        header = (
            f"{'visual':>6} {'configuration':<27} {'prefill ms':>10} {'speedup':>8} {'theory':>7} {'peak MiB':>9} "
            f"{'KV MiB':>7}"
        )
        lines += [header, "-" * len(header)]
        for s in result["scaling"]:
            for r in s["configs"]:
                lines.append(
                    f"{s['visual_tokens']:>6} {r['name']:<27} {r['prefill_ms']:>10.1f} {r['prefill_speedup']:>7.2f}x "
                    f"{r['flops_speedup']:>6.2f}x {_mib(r['peak_bytes']):>9} {_mib(r['kv_cache_bytes']):>7}"
                )
        lines.append("Scoring memory (one query row, O(L)) vs a full-matrix scorer (O(L^2), by its tensor shapes):")
        for s in result["scaling"]:
            sc = s["scorer"]
            lines.append(
                f"  L={sc['length']:>5}: scorer peak {_mib(sc['scorer_peak_bytes']):>6} MiB measured; full matrix "
                f"{_mib(sc['full_matrix_head_mean_bytes']):>7} MiB head-mean map, "
                f"{_mib(sc['full_matrix_per_head_bytes']):>8} MiB per-head probabilities"
            )
    if "batch" in result:
        lines += ["", "Prefill throughput, left-padded batches with different text lengths"]
        header = f"{'batch':>5} {'configuration':<27} {'tokens':>7} {'padded':>7} {'prefill ms':>10} {'tokens/s':>9} {'vs b1':>6}"
        lines += [header, "-" * len(header)]
        for r in result["batch"]:
            lines.append(
                f"{r['batch']:>5} {r['name']:<27} {r['prompt_tokens']:>7} {r['padded_tokens']:>7} "
                f"{r['prefill_ms']:>10.1f} {r['tokens_per_s']:>9.0f} {r['throughput_vs_batch1']:>5.2f}x"
            )
    if result.get("targets"):
        lines += ["", "Targets"]
        for t in result["targets"]:
            best = f" (best-of-repeats: {t['best_of']:.3f})" if "best_of" in t else ""
            lines.append(f"  [{'ok' if t['holds'] else 'MISS'}] {t['target']}: {t['value']:.3f}{best}")
    lines.append(f"\ntotal {result['seconds']:.0f} s")
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: str) -> None:
    def default(o):
        if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
            return None
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    with open(path, "w") as f:
        json.dump(result, f, indent=2, default=default, allow_nan=False)


def plot(result: dict[str, Any], path: str) -> None:
    """Measured prefill speedup against the theoretical FLOPs speedup, one point per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.get("latency", []) if r["method"] != "vanilla"]
    fig, ax = plt.subplots(figsize=(6.5, 5))
    markers = {"fastv": "o", "pdrop": "s", "reroute per-layer": "^", "reroute stage-wise": "D", "overhead": "x"}
    for method, marker in markers.items():
        pts = [r for r in rows if r["method"] == method]
        if pts:
            ax.scatter([r["flops_speedup"] for r in pts], [r["prefill_speedup"] for r in pts], marker=marker, label=method)
    top = max([1.0] + [max(r["flops_speedup"], r["prefill_speedup"]) for r in rows]) * 1.1
    ax.plot([0, top], [0, top], "k--", lw=1, label="measured = theoretical")
    ax.plot([0, top], [0, 0.9 * top], "k:", lw=1, label="0.9 x theoretical")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("theoretical speedup (decoder FLOPs, paper formula)")
    ax.set_ylabel("measured prefill speedup over vanilla")
    ax.set_title(f"{result['shape']['name']} on {result['device']} ({result['dtype']}, threads={result['threads']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
