"""The benchmark's sections (latency, execution pairs, scaling, batch) and the whole run."""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from reroute.bench.measure import (
    _median,
    _round_robin,
    _Routed,
    _sync,
    decoder_flops,
    expected_kv_cache_bytes,
    kv_cache_bytes,
    measure_memory,
    output_cache,
    time_generate,
    time_prefill,
    tokens_per_layer,
    tune_malloc,
)
from reroute.bench.shapes import (
    SHAPES,
    BenchConfig,
    bench_configs,
    build_model,
    make_inputs,
)
from reroute.config import RoutingConfig
from reroute.runtime.dims import decoder_dims
from reroute.runtime.trace import Trace

# --------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------


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

    for r, order in enumerate(_round_robin(configs, warmup + repeats)):
        for c in order:
            gc.collect()
            with _Routed(model, c.config) as handle:
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
        with _Routed(model, c.config) as handle:
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
                "prefill_ms": 1e3 * _median(prefill[c.name]),
                "prefill_ms_all": [1e3 * s for s in prefill[c.name]],
                "prefill_ms_min": 1e3 * min(prefill[c.name], default=float("nan")),
                "prefill_cpu_ms": 1e3 * _median(prefill_cpu[c.name]),
                "decoder_ms": 1e3 * _median(decoder[c.name]),
                "generate_prefill_ms": 1e3 * _median(gen_prefill[c.name]),
                "decode_ms_per_token": 1e3 * _median(decode[c.name]),
                "flops": decoder_flops(dims, per_sample),
                "peak_bytes": peak,
                "retained_bytes": retained,
                "kv_cache_bytes": measured_kv,
                "kv_cache_bytes_expected": expected_kv_cache_bytes(trace, model, batch, length),
                "cache_lengths": list(trace.cache_lengths) if trace is not None else [length] * dims.num_layers,
            }
        )
    _add_ratios(rows)
    return rows


def run_execution_pairs(
    model,
    inputs: dict,
    stagewise: BenchConfig,
    per_layer: BenchConfig,
    *,
    pairs: int = 10,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Stage-wise against per-layer execution of one schedule, in back-to-back pairs (order
    alternating), decoder time only: their difference (the gathers and scatters per-layer adds
    at every compact layer) is small next to the noise of a shared machine, so it is measured
    as the median of per-pair ratios, with the share of pairs stage-wise won."""
    ratios, wins = [], 0
    for i in range(pairs + 1):
        order = (stagewise, per_layer) if i % 2 == 0 else (per_layer, stagewise)
        times = {}
        for c in order:
            gc.collect()
            with _Routed(model, c.config):
                timing = time_prefill(model, inputs)
                timing.out = None
            times[c.name] = timing.decoder
        if i == 0:
            continue  # warm-up pair
        ratios.append(times[per_layer.name] / times[stagewise.name])
        wins += times[stagewise.name] < times[per_layer.name]
    log(f"  execution: {pairs} pairs done")
    return {
        "stagewise": stagewise.name,
        "per_layer": per_layer.name,
        "pairs": pairs,
        "per_layer_over_stagewise": _median(ratios),
        "ratios": ratios,
        "stagewise_wins": wins,
        "data_movement": {c.name: data_movement(model, inputs, c.config) for c in (stagewise, per_layer)},
    }


@torch.no_grad()
def data_movement(model, inputs: dict, config: RoutingConfig) -> dict[str, float]:
    """What the engine's compact/scatter steps (`Layout.gather`, `Layout.scatter_`) move in one
    routed prefill: calls, bytes written, and the wall time spent in them (an untimed extra run)."""
    from reroute.runtime.layout import Layout

    device = model.device
    totals = {"calls": 0, "bytes": 0, "ms": 0.0}
    original_gather, original_scatter = Layout.gather, Layout.scatter_

    def timed(fn, moved):
        def wrapper(self, *args):
            _sync(device)
            start = time.perf_counter()
            out = fn(self, *args)
            _sync(device)
            totals["ms"] += 1e3 * (time.perf_counter() - start)
            totals["calls"] += 1
            totals["bytes"] += moved(out, *args)
            return out

        return wrapper

    Layout.gather = timed(original_gather, lambda out, full: out.numel() * out.element_size())
    Layout.scatter_ = timed(original_scatter, lambda out, full, compact: compact.numel() * compact.element_size())
    try:
        with _Routed(model, config):
            time_prefill(model, inputs)
    finally:
        Layout.gather, Layout.scatter_ = original_gather, original_scatter
    return totals


def _add_ratios(rows: list[dict[str, Any]]) -> None:
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


def visual_count(model, inputs: dict) -> list[int]:
    """Visual tokens per sample of a batch."""
    return (inputs["input_ids"] == model.config.image_token_id).sum(dim=1).tolist()


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
        for order in _round_robin(configs, repeats):
            for c in order:
                gc.collect()
                with _Routed(model, c.config) as handle:
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
                    "prefill_ms": 1e3 * _median(times[c.name]),
                    "avg_T": traces[c.name].avg_T if traces[c.name] is not None else float(visual_count(model, inputs)[0]),
                    "flops": decoder_flops(dims, per_sample),
                    "peak_bytes": peak,
                    "retained_bytes": retained,
                    "kv_cache_bytes": kv,
                }
            )
        _add_ratios(row_configs)
        rows.append({"images": n_images, "visual_tokens": visual_count(model, inputs)[0], "length": length,
                     "configs": row_configs, "scorer": scorer})  # fmt: skip
        log(f"  scaling: {n_images} image(s), {length} tokens done")
    return rows


BATCH_TEXT_LENGTHS = (64, 40, 88, 56, 72, 48, 80, 64)


def run_batch(
    model,
    configs: Sequence[BenchConfig],
    batch_sizes: Sequence[int] = (1, 4, 8),
    *,
    repeats: int = 2,
    warmup: int = 1,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Prefill throughput (real prompt tokens per second) of left-padded batches whose samples
    have different text lengths (``BATCH_TEXT_LENGTHS``, cycled)."""
    cases = []
    for b in batch_sizes:
        lengths = [BATCH_TEXT_LENGTHS[i % len(BATCH_TEXT_LENGTHS)] for i in range(b)]
        cases.append((b, make_inputs(model, text_lengths=lengths, seed=b)))
    items = [(b, inputs, c) for b, inputs in cases for c in configs]
    times: dict[tuple[int, str], list[float]] = {(b, c.name): [] for b, _, c in items}
    for r, order in enumerate(_round_robin(items, warmup + repeats)):
        if r < warmup:  # warming up on the smallest batch is enough (same kernels, same code paths)
            order = [item for item in order if item[0] == min(batch_sizes)]
        for b, inputs, c in order:
            gc.collect()
            with _Routed(model, c.config):
                timing = time_prefill(model, inputs)
                timing.out = None
            if r >= warmup:
                times[(b, c.name)].append(timing.wall)
        log(f"  batch: {'warm-up' if r < warmup else f'repeat {r - warmup + 1}/{repeats}'} done")
    rows = []
    for b, inputs, c in items:
        real = int(inputs["attention_mask"].sum())
        seconds = _median(times[(b, c.name)])
        rows.append(
            {
                "batch": b,
                "name": c.name,
                "prompt_tokens": real,
                "padded_tokens": inputs["input_ids"].numel(),
                "prefill_ms": 1e3 * seconds,
                "tokens_per_s": real / seconds,
            }
        )
    for row in rows:
        one = next(r for r in rows if r["name"] == row["name"] and r["batch"] == min(batch_sizes))
        row["throughput_vs_batch1"] = row["tokens_per_s"] / one["tokens_per_s"]
    return rows


@torch.no_grad()
def vision_tower_ms(model, inputs: dict, repeats: int = 3) -> float:
    """Median milliseconds of the vision tower and projector alone (outside the decoder)."""
    times = []
    for _ in range(repeats + 1):
        _sync(model.device)
        start = time.perf_counter()
        model.model.get_image_features(pixel_values=inputs["pixel_values"])
        _sync(model.device)
        times.append(time.perf_counter() - start)
    return 1e3 * _median(times[1:])


# --------------------------------------------------------------------------------------
# the whole benchmark
# --------------------------------------------------------------------------------------


@dataclass
class BenchOptions:
    shape: str | None = None  # default: llava-1.5-narrow on CPU, llava-1.5-7b on CUDA
    device: str | None = None  # default: cuda if available
    dtype: str | None = None  # default: the shape's (float32 on CPU, float16 on CUDA)
    threads: int = 1
    tiers: tuple[float, ...] = (192, 128, 64)
    ratios: str = "solved"
    reroute_preset: str = "reroute_vs_pdrop"
    num_text: int = 64
    repeats: int = 5
    warmup: int = 1
    new_tokens: int = 16
    execution_pairs: int = 20
    scaling_images: tuple[int, ...] = (1, 4, 16)
    scaling_repeats: int = 1
    batch_sizes: tuple[int, ...] = (1, 4, 8)
    batch_repeats: int = 2
    sections: tuple[str, ...] = ("latency", "scaling", "batch")
    seed: int = 0
    tune_malloc: bool = True
    quick: bool = False

    @classmethod
    def quick_defaults(cls, **overrides) -> BenchOptions:
        """A ~1-2 minute CPU run: tier 64 only, 2 repeats, 576 and 2304 visual tokens, batches 1 and 4."""
        values = dict(
            tiers=(64,), repeats=2, warmup=1, new_tokens=8, execution_pairs=4, scaling_images=(1, 4), batch_sizes=(1, 4),
            batch_repeats=1, quick=True,
        )  # fmt: skip
        values.update(overrides)
        return cls(**values)


def run_benchmark(options: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build the model, run the chosen sections, return everything as plain data (for JSON)."""
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shape_name = options.shape or ("llava-1.5-7b" if device.type == "cuda" else "llava-1.5-narrow")
    shape = SHAPES[shape_name]
    malloc_tuned = tune_malloc() if options.tune_malloc else False
    if device.type == "cpu":
        torch.set_num_threads(options.threads)
    dtype = getattr(torch, options.dtype) if options.dtype else None
    started = time.perf_counter()
    log(f"building {shape.description} on {device} ...")
    model = build_model(shape, device=device, dtype=dtype, seed=options.seed)
    inputs = make_inputs(model, text_lengths=(options.num_text,), seed=options.seed)
    configs = bench_configs(model, options.tiers, ratios=options.ratios, reroute_preset=options.reroute_preset)
    result: dict[str, Any] = {
        "shape": dataclasses.asdict(shape),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "dtype": str(model.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "malloc_tuned": malloc_tuned,
        "torch": torch.__version__,
        "options": dataclasses.asdict(options),
        "prompt": {"length": inputs["input_ids"].shape[1], "visual_tokens": visual_count(model, inputs)[0],
                   "text_tokens": options.num_text},  # fmt: skip
        "ratios_note": (
            f"ratios={options.ratios!r} from reroute.preset; 'reroute per-layer' and 'reroute stage-wise' both run "
            f"{options.reroute_preset!r}'s schedule"
        ),
    }
    # The heap of a process that imported torch and transformers makes every gc.collect() take
    # ~0.2 s; freezing what exists now leaves the collections between runs only our garbage.
    gc.collect()
    gc.freeze()
    try:
        _run_sections(model, inputs, configs, options, result, log)
    finally:
        gc.unfreeze()
    result["targets"] = check_targets(result)
    result["seconds"] = time.perf_counter() - started
    return result


def _run_sections(model, inputs, configs, options: BenchOptions, result: dict[str, Any], log) -> None:
    result["vision_tower_ms"] = vision_tower_ms(model, inputs)
    if "latency" in options.sections:
        log(f"latency: {len(configs)} configurations, {options.warmup} warm-up + {options.repeats} rounds ...")
        result["latency"] = run_latency(
            model, inputs, configs, repeats=options.repeats, warmup=options.warmup, new_tokens=options.new_tokens, log=log
        )
        low = min(options.tiers) if options.tiers else None
        by_name = {c.name: c for c in configs}
        if low is not None and options.execution_pairs > 0:
            result["execution"] = run_execution_pairs(
                model, inputs, by_name[f"reroute stage-wise @{low:g}"], by_name[f"reroute per-layer @{low:g}"],
                pairs=options.execution_pairs, log=log,
            )  # fmt: skip
    lowest = min(options.tiers) if options.tiers else None
    if "scaling" in options.sections and lowest is not None:
        chosen = [c for c in configs if c.method == "vanilla" or (c.tier == lowest and c.method in ("fastv", "reroute stage-wise"))]
        log(f"scaling: {list(options.scaling_images)} image(s) ...")
        result["scaling"] = run_scaling(
            model, chosen, options.scaling_images, num_text=options.num_text, repeats=options.scaling_repeats, log=log
        )
    if "batch" in options.sections and lowest is not None:
        chosen = [c for c in configs if c.method == "vanilla" or (c.tier == lowest and c.method == "reroute stage-wise")]
        log(f"batch: sizes {list(options.batch_sizes)} ...")
        result["batch"] = run_batch(
            model, chosen, options.batch_sizes, repeats=options.batch_repeats, warmup=1, log=log
        )


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


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
