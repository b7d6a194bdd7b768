"""The scaling section: prefill time, memory and KV cache as the visual tokens grow (several images
per prompt), and the bytes the last-token scorer needs against a full-matrix scorer's."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import Any

import torch

from reroute.bench.measure import (
    Routed,
    decoder_flops,
    kv_cache_bytes,
    measure_memory,
    median,
    output_cache,
    round_robin,
    time_prefill,
    tokens_per_layer,
)
from reroute.bench.shapes import BenchConfig, make_inputs, visual_count
from reroute.bench.speedups import add_speedups
from reroute.runtime.dims import decoder_dims
from reroute.runtime.trace import Trace


@torch.no_grad()
def scorer_memory(model, inputs: dict, layer_index: int) -> dict[str, int]:
    """Bytes `reroute.methods.attention.last_token_attention` allocates at its peak for this prompt (measured),
    against the maps a full-matrix scorer (the reference code's) materialises (by their shapes)."""
    from reroute.backbones import backbone_for
    from reroute.methods.attention import last_token_attention

    backbone = backbone_for(model)
    text_model = backbone.text_model(model)
    layer = backbone.layers(text_model)[layer_index]
    ids, mask = inputs["input_ids"][:1], inputs["attention_mask"][:1].bool()
    hidden = text_model.embed_tokens(ids)  # the values do not matter, only the shapes
    length = ids.shape[1]
    positions = torch.arange(length, device=ids.device)[None]
    cos, sin = backbone.rotary(text_model)(hidden, positions)
    query = (mask * torch.arange(length, device=ids.device)).argmax(dim=1)
    fn = lambda: last_token_attention(layer, hidden, cos, sin, mask, query, backbone.apply_rotary)  # noqa: E731
    _, peak, _ = measure_memory(fn, model.device)
    heads = layer.self_attn.config.num_attention_heads
    return {
        "length": length,
        "scorer_peak_bytes": peak,
        "full_matrix_head_mean_bytes": length * length * 4,  # one (L, L) float32 map
        "full_matrix_per_head_bytes": heads * length * length * 4,  # (H, L, L) float32 probabilities
    }


def run_scaling(
    model,
    configs: Sequence[BenchConfig],
    images: Sequence[int] = (1, 4, 16),
    *,
    num_text: int = 64,
    repeats: int = 1,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Visual tokens 576 -> 2304 -> 9216 (several images per prompt): prefill time, memory,
    KV cache and the scorer's bytes. The configurations keep their keep ratios, so their
    budgets grow with the visual tokens. Each run is timed inside the memory profiler
    (its cost is microseconds per operator, against milliseconds-long operators here)."""
    device = model.device
    dims = decoder_dims(model)
    rows = []
    for n_images in images:
        inputs = make_inputs(model, num_images=n_images, text_lengths=(num_text,))
        length = inputs["input_ids"].shape[1]
        times: dict[str, list[float]] = {c.name: [] for c in configs}
        memory: dict[str, tuple[int, int, int]] = {}
        traces: dict[str, Trace | None] = {}
        for order in round_robin(configs, repeats):
            for c in order:
                gc.collect()
                with Routed(model, c.config) as handle:
                    timing, peak, retained = measure_memory(lambda: time_prefill(model, inputs), device)
                    memory[c.name] = (peak, retained, kv_cache_bytes(output_cache(timing.out)))
                    traces[c.name] = handle.trace if handle is not None else None
                    timing.out = None
                times[c.name].append(timing.wall)
        first_decision = min((c.config.decision_layers[0] for c in configs if c.config is not None), default=1)
        scorer = scorer_memory(model, inputs, first_decision)
        row_configs = []
        for c in configs:
            per_sample = tokens_per_layer(traces[c.name], inputs["attention_mask"], dims.num_layers)
            peak, retained, kv = memory[c.name]
            row_configs.append(
                {
                    "name": c.name,
                    "method": c.method,
                    "prefill_ms": 1e3 * median(times[c.name]),
                    "avg_T": traces[c.name].avg_T if traces[c.name] is not None else float(visual_count(model, inputs)[0]),
                    "flops": decoder_flops(dims, per_sample),
                    "peak_bytes": peak,
                    "retained_bytes": retained,
                    "kv_cache_bytes": kv,
                }
            )
        add_speedups(row_configs)
        rows.append({"images": n_images, "visual_tokens": visual_count(model, inputs)[0], "length": length,
                     "configs": row_configs, "scorer": scorer})  # fmt: skip
        log(f"  scaling: {n_images} image(s), {length} tokens done")
    return rows
