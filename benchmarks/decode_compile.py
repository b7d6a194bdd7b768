#!/usr/bin/env python
"""Per-token decode latency, eager vs torch.compile'd, vanilla vs routed, and the KV-cache bytes of the
routed static cache against the dynamic cache and vanilla (docs/semantics.md §17; docs/benchmarks/decode-compile.md).

    python benchmarks/decode_compile.py                        # the CPU bench shape (llava-1.5-narrow)
    python benchmarks/decode_compile.py --shape tiny --new 8   # a smoke run
    python benchmarks/decode_compile.py --shape llava-1.5-7b --device cuda --mode reduce-overhead

Decode latency per token is the median time between two consecutive tokens' logits inside generate()
(one decode step, the sampling loop's own overhead included; the prefill is not in it). Compiled rows use
generate()'s own compiled decode step (static cache + ``compile_config``); the compilation happens in a
warm-up call that is not timed. Random weights: only the times and bytes mean anything.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from transformers import CompileConfig, LogitsProcessor, LogitsProcessorList

import reroute
from reroute.bench.shapes import BENCH_SHAPES, build_model, make_inputs


def _cache_bytes(cache) -> int:
    return sum(
        layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
        for layer in cache.layers
        if getattr(layer, "is_initialized", False) and layer.keys is not None
    )


def _generate(model, inputs, new: int, **options):
    return model.generate(**inputs, do_sample=False, max_new_tokens=new, min_new_tokens=new, **options)


class _StepClock(LogitsProcessor):
    """Records the time generate() reaches each token's logits: consecutive differences are decode steps."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        if scores.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        return scores


def per_token_ms(model, inputs, new: int, repeats: int, **options) -> float:
    """Median time between consecutive tokens' logits (one decode step each), over ``repeats`` calls."""
    steps = []
    for _ in range(repeats):
        clock = _StepClock()
        with torch.no_grad():
            _generate(model, inputs, new, logits_processor=LogitsProcessorList([clock]), **options)
        steps += [b - a for a, b in zip(clock.times, clock.times[1:])]
    return 1000 * statistics.median(steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="decode_compile.py", description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llava-1.5-narrow", choices=sorted(BENCH_SHAPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="reroute_vs_pdrop")
    parser.add_argument("--tier", type=float, default=64, help="avg_T in the paper's units (of 576 visual tokens)")
    parser.add_argument("--new", type=int, default=17, help="tokens generated in the timed call (>= 2)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU (reroute bench times one thread too)")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--mode", default=None, help="torch.compile mode (reduce-overhead: CUDA graphs on GPU)")
    args = parser.parse_args(argv)

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.shape, device=args.device)
    inputs = make_inputs(model)
    compile_config = CompileConfig(fullgraph=True, dynamic=False, backend=args.backend, mode=args.mode)
    compile_config._compile_all_devices = True  # generate() compiles on accelerators only unless told
    config = reroute.preset(args.preset, args.tier, model=model)
    print(f"# shape {args.shape} on {args.device} ({torch.get_num_threads()} threads), {model.dtype!s}, prompt {inputs['input_ids'].shape[1]} tokens, "
          f"{args.new} new tokens; routed: {args.preset} tier {args.tier:g} = {config}")  # fmt: skip

    rows = []
    for name in ("vanilla", "routed"):
        handle = reroute.apply(model, config) if name == "routed" else None
        try:
            with torch.no_grad():
                dynamic = _generate(model, inputs, args.new, return_dict_in_generate=True).cache
                static = _generate(model, inputs, args.new, cache_implementation="static", return_dict_in_generate=True).cache
            eager_dynamic = per_token_ms(model, inputs, args.new, args.repeats)
            eager_static = per_token_ms(model, inputs, args.new, args.repeats, cache_implementation="static")
            torch._dynamo.reset()
            warm = time.perf_counter()
            with torch.no_grad():  # compiles the decode step
                _generate(model, inputs, args.new, cache_implementation="static", compile_config=compile_config)
            warm = time.perf_counter() - warm
            compiled = per_token_ms(
                model, inputs, args.new, args.repeats, cache_implementation="static", compile_config=compile_config
            )
            rows.append((name, eager_dynamic, eager_static, compiled, warm, _cache_bytes(dynamic), _cache_bytes(static)))
        finally:
            if handle is not None:
                handle.restore()
            model.__dict__.pop("_compiled_call", None)  # the next row compiles its own decode step

    print()
    print("| model | decode ms/token, eager, dynamic cache | eager, static cache | compiled, static cache "
          "| compile (warm-up call) s | KV bytes, dynamic cache | KV bytes, static cache |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, eager_dynamic, eager_static, compiled, warm, dynamic_bytes, static_bytes in rows:
        print(f"| {name} | {eager_dynamic:.2f} | {eager_static:.2f} | {compiled:.2f} | {warm:.0f} "
              f"| {dynamic_bytes / 2**20:.1f} MiB | {static_bytes / 2**20:.1f} MiB |")  # fmt: skip
    (vanilla, routed) = rows
    print()
    print(f"routed / vanilla, compiled: {routed[3] / vanilla[3]:.2f}; compiled / eager (static), vanilla: "
          f"{vanilla[3] / vanilla[2]:.2f}, routed: {routed[3] / routed[2]:.2f}")  # fmt: skip
    print(f"routed static cache bytes / vanilla static: {routed[6] / vanilla[6]:.3f}; "
          f"/ routed dynamic: {routed[6] / routed[5]:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
