"""The execution section: stage-wise against per-layer execution of one schedule, in back-to-back
pairs, and the bytes and time the engine's gathers and scatters take in each."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import torch

from reroute.bench.measure import Routed, median, synchronize, time_prefill
from reroute.bench.shapes import BenchConfig
from reroute.config import RoutingConfig


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
            with Routed(model, c.config):
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
        "per_layer_over_stagewise": median(ratios),
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
            synchronize(device)
            start = time.perf_counter()
            out = fn(self, *args)
            synchronize(device)
            totals["ms"] += 1e3 * (time.perf_counter() - start)
            totals["calls"] += 1
            totals["bytes"] += moved(out, *args)
            return out

        return wrapper

    Layout.gather = timed(original_gather, lambda out, full: out.numel() * out.element_size())
    Layout.scatter_ = timed(original_scatter, lambda out, full, compact: compact.numel() * compact.element_size())
    try:
        with Routed(model, config):
            time_prefill(model, inputs)
    finally:
        Layout.gather, Layout.scatter_ = original_gather, original_scatter
    return totals
