"""The whole benchmark: its options, the model and inputs built once, the chosen sections in order,
and everything returned as plain data (for the report and the JSON)."""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from reroute.bench.batch import run_batch
from reroute.bench.execution import run_execution_pairs
from reroute.bench.latency import run_latency
from reroute.bench.measure import tune_malloc, vision_tower_ms
from reroute.bench.scaling import run_scaling
from reroute.bench.shapes import BENCH_SHAPES, bench_configs, build_model, make_inputs, visual_count
from reroute.bench.targets import check_targets


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
    shape = BENCH_SHAPES[shape_name]
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
