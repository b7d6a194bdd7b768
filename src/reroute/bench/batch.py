"""The batch section: prefill throughput of left-padded batches whose samples differ in length."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import Any

from reroute.bench.measure import Routed, median, round_robin, time_prefill
from reroute.bench.shapes import BenchConfig, make_inputs

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
    for r, order in enumerate(round_robin(items, warmup + repeats)):
        if r < warmup:  # warming up on the smallest batch is enough (same kernels, same code paths)
            order = [item for item in order if item[0] == min(batch_sizes)]
        for b, inputs, c in order:
            gc.collect()
            with Routed(model, c.config):
                timing = time_prefill(model, inputs)
                timing.out = None
            if r >= warmup:
                times[(b, c.name)].append(timing.wall)
        log(f"  batch: {'warm-up' if r < warmup else f'repeat {r - warmup + 1}/{repeats}'} done")
    rows = []
    for b, inputs, c in items:
        real = int(inputs["attention_mask"].sum())
        seconds = median(times[(b, c.name)])
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
