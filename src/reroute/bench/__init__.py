"""`reroute bench`: prefill/decode latency, memory and throughput of vanilla, remove and reroute, side by side
with the FLOPs limit (`reroute bench`, benchmarks/bench_latency.py).

Modules: `shapes` (the random-weight models, inputs and configurations timed), `measure` (one
forward or generate: timers, memory, KV bytes, FLOPs), one module per section (`latency`,
`execution` for the stage-wise/per-layer pairs, `scaling`, `batch`), `speedups` (each row against
vanilla), `targets` (what must hold), `benchmark` (the options and the whole run) and `report`
(text, JSON, figure). Every public name stays importable from ``reroute.bench``.

What is timed is the user's path: a real ``LlavaForConditionalGeneration`` built from
transformers' config classes with random weights (nothing is downloaded), routed with
``reroute.apply`` and called through its own ``forward`` (prefill, ``use_cache=True``,
``logits_to_keep=1`` as ``generate`` does) and its own ``generate`` (decode). The vision tower
runs too: on the CPU shape it is a tiny CLIP whose 24 x 24 patch grid gives LLaVA-1.5's 576
visual tokens per image (48 px images, 2 px patches), so its cost is small and measured apart.

Methodology:

- one process, one model; every configuration is applied and restored around its own
  measurement, round-robin over the configurations in every repeat (the starting point
  rotates), after warm-up rounds; medians are reported (the best of the repeats too, in the
  JSON). A machine shared with other jobs slows every configuration of a round alike.
  On CPU, torch runs on ``threads`` threads (default 1) and glibc's malloc is tuned so that
  steady-state forwards take no page faults (`tune_malloc`: without it the same forward
  varied by +-30 %).
- prefill is one forward; its wall time, this process's CPU time and the wall time inside
  the decoder (the text model's forward, routing included; no vision tower, no lm_head)
  are recorded. Decode is timed from the timestamps a logits processor takes after every
  generated token of ``generate``: ``(t_last - t_first) / (new_tokens - 1)``.
- theoretical speedup: decoder FLOPs by the paper formula ``4nd^2 + 2n^2d + 2ndm`` per layer
  (`reroute.budgets.cost.paper_layer_flops`) over the per-layer token counts the forward really
  ran (``handle.trace``), vanilla over routed; also by the exact count of every matmul with
  causal attention (`reroute.budgets.cost.exact_layer_flops`). ``efficiency = measured / theoretical``.
- stage-wise against per-layer execution: back-to-back pairs (their difference is ~1 % of a
  prefill, below the noise of a round-robin median), and the bytes and time the engine's
  gathers and scatters take in each (`data_movement`).
- memory (an untimed extra forward per configuration): on CPU the bytes torch allocates
  during the prefill, from the profiler's allocation events (``profile_memory=True``):
  ``peak`` is the highest live total above what existed before the call (activations, KV
  cache, logits; not the weights), ``retained`` what is still alive after it (the KV cache and
  the outputs). On CUDA ``torch.cuda.max_memory_allocated`` minus the bytes before the call.
  KV-cache bytes are the cache's own tensors after prefill. The scaling section times its
  (single) runs inside that profiler: microseconds per operator, against operators of
  milliseconds to seconds there.
"""

from __future__ import annotations

from reroute.bench.batch import BATCH_TEXT_LENGTHS, run_batch
from reroute.bench.benchmark import BenchOptions, run_benchmark
from reroute.bench.execution import data_movement, run_execution_pairs
from reroute.bench.latency import run_latency
from reroute.bench.measure import (
    MiB,
    PrefillTiming,
    decoder_flops,
    expected_kv_cache_bytes,
    kv_cache_bytes,
    measure_memory,
    output_cache,
    time_generate,
    time_prefill,
    tokens_per_layer,
    tune_malloc,
    vision_tower_ms,
)
from reroute.bench.report import format_report, plot, write_json
from reroute.bench.scaling import run_scaling, scorer_memory
from reroute.bench.shapes import (
    IMAGE_TOKEN_ID,
    PAD_TOKEN_ID,
    BENCH_SHAPES,
    BenchConfig,
    BenchShape,
    bench_configs,
    build_model,
    make_inputs,
    shape_of_released,
    visual_count,
    visual_tokens_per_image,
)
from reroute.bench.targets import check_targets

__all__ = [
    "BATCH_TEXT_LENGTHS",
    "BenchConfig",
    "BenchOptions",
    "BenchShape",
    "IMAGE_TOKEN_ID",
    "MiB",
    "PAD_TOKEN_ID",
    "PrefillTiming",
    "BENCH_SHAPES",
    "bench_configs",
    "build_model",
    "check_targets",
    "data_movement",
    "decoder_flops",
    "expected_kv_cache_bytes",
    "format_report",
    "kv_cache_bytes",
    "make_inputs",
    "measure_memory",
    "output_cache",
    "plot",
    "run_batch",
    "run_benchmark",
    "run_execution_pairs",
    "run_latency",
    "run_scaling",
    "scorer_memory",
    "shape_of_released",
    "time_generate",
    "time_prefill",
    "tokens_per_layer",
    "tune_malloc",
    "vision_tower_ms",
    "visual_count",
    "visual_tokens_per_image",
    "write_json",
]
