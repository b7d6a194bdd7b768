"""The latency section: prefill and decode time, FLOPs, memory and KV-cache bytes of every
configuration, round-robin over the configurations in every repeat."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import Any

from reroute.bench.measure import (
    Routed,
    decoder_flops,
    expected_kv_cache_bytes,
    kv_cache_bytes,
    measure_memory,
    median,
    output_cache,
    round_robin,
    time_generate,
    time_prefill,
    tokens_per_layer,
)
from reroute.bench.shapes import BenchConfig, visual_count
from reroute.bench.speedups import add_speedups
from reroute.runtime.dims import decoder_dims
from reroute.runtime.trace import Trace


def run_latency(
    model,
    inputs: dict,
    configs: Sequence[BenchConfig],
    *,
    repeats: int = 5,
    warmup: int = 1,
    new_tokens: int = 16,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Prefill and decode latency, FLOPs, memory and KV-cache bytes of every configuration."""
    device = model.device
    dims = decoder_dims(model)
    batch, length = inputs["input_ids"].shape
    prefill: dict[str, list[float]] = {c.name: [] for c in configs}
    prefill_cpu: dict[str, list[float]] = {c.name: [] for c in configs}
    decoder: dict[str, list[float]] = {c.name: [] for c in configs}
    gen_prefill: dict[str, list[float]] = {c.name: [] for c in configs}
    decode: dict[str, list[float]] = {c.name: [] for c in configs}
    traces: dict[str, Trace | None] = {}

    for r, order in enumerate(round_robin(configs, warmup + repeats)):
        for c in order:
            gc.collect()
            with Routed(model, c.config) as handle:
                timing = time_prefill(model, inputs)
                traces[c.name] = handle.trace if handle is not None else None
                timing.out = None
                if new_tokens > 1:
                    g_prefill, g_decode = time_generate(model, inputs, new_tokens)
            if r >= warmup:
                prefill[c.name].append(timing.wall)
                prefill_cpu[c.name].append(timing.cpu)
                decoder[c.name].append(timing.decoder)
                if new_tokens > 1:
                    gen_prefill[c.name].append(g_prefill)
                    decode[c.name].append(g_decode)
        status = "warm-up" if r < warmup else f"repeat {r - warmup + 1}/{repeats}"
        log(f"  latency: {status} done")

    rows = []
    for c in configs:
        gc.collect()
        with Routed(model, c.config) as handle:
            out, peak, retained = measure_memory(lambda: time_prefill(model, inputs).out, device)
            cache = output_cache(out)
            measured_kv = kv_cache_bytes(cache)
            del out, cache
        trace = traces[c.name]
        per_sample = tokens_per_layer(trace, inputs["attention_mask"], dims.num_layers)
        rows.append(
            {
                "name": c.name,
                "method": c.method,
                "tier": c.tier,
                "config": None if c.config is None else c.config.to_dict(),
                "avg_T": trace.avg_T if trace is not None else float(visual_count(model, inputs)[0]),
                "visual_per_layer": list(trace.samples[0].visual_per_layer) if trace is not None else None,
                "tokens_per_layer": per_sample[0],
                "prefill_ms": 1e3 * median(prefill[c.name]),
                "prefill_ms_all": [1e3 * s for s in prefill[c.name]],
                "prefill_ms_min": 1e3 * min(prefill[c.name], default=float("nan")),
                "prefill_cpu_ms": 1e3 * median(prefill_cpu[c.name]),
                "decoder_ms": 1e3 * median(decoder[c.name]),
                "generate_prefill_ms": 1e3 * median(gen_prefill[c.name]),
                "decode_ms_per_token": 1e3 * median(decode[c.name]),
                "flops": decoder_flops(dims, per_sample),
                "peak_bytes": peak,
                "retained_bytes": retained,
                "kv_cache_bytes": measured_kv,
                "kv_cache_bytes_expected": expected_kv_cache_bytes(trace, model, batch, length),
                "cache_lengths": list(trace.cache_lengths) if trace is not None else [length] * dims.num_layers,
            }
        )
    add_speedups(rows)
    return rows
