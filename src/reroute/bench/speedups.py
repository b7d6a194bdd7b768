"""Each row of a section against its vanilla row: measured and theoretical speedups, efficiency, overhead."""

from __future__ import annotations

from typing import Any


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Speedups over the vanilla row: measured, theoretical (paper / exact-causal FLOPs), efficiency."""
    base = next(r for r in rows if r["method"] == "vanilla")
    for r in rows:
        r["prefill_speedup"] = base["prefill_ms"] / r["prefill_ms"]
        r["decode_speedup"] = base["decode_ms_per_token"] / r["decode_ms_per_token"] if "decode_ms_per_token" in r else None
        r["flops_speedup"] = base["flops"]["paper"] / r["flops"]["paper"]
        r["flops_speedup_exact_causal"] = base["flops"]["exact_causal"] / r["flops"]["exact_causal"]
        r["efficiency"] = r["prefill_speedup"] / r["flops_speedup"]
        if "prefill_ms_min" in r:  # best of the repeats: contention on a shared machine only ever adds time
            r["prefill_speedup_min"] = base["prefill_ms_min"] / r["prefill_ms_min"]
            r["efficiency_min"] = r["prefill_speedup_min"] / r["flops_speedup"]
            r["overhead_min"] = r["prefill_ms_min"] / base["prefill_ms_min"] - 1
        if "decoder_ms" in r:
            r["decoder_speedup"] = base["decoder_ms"] / r["decoder_ms"]
            r["decoder_efficiency"] = r["decoder_speedup"] / r["flops_speedup"]
            r["decoder_efficiency_exact"] = r["decoder_speedup"] / r["flops_speedup_exact_causal"]
        r["overhead"] = r["prefill_ms"] / base["prefill_ms"] - 1
