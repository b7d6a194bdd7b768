"""The budget solver: the ratios of a schedule shape that hit a target avg_T exactly (docs/semantics.md §4).

The paper publishes keep ratios for LLaVA-1.5's 32 layers; on another depth, or for another
budget, the same *shape* of schedule needs other numbers. The solver finds the shape's one
free parameter by bisection (avg_T is increasing in it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from reroute.budgets.counts import REFERENCE_NUM_VISUAL, check_schedule, schedule_avg_t, visual_counts
from reroute.budgets.shapes import Shape, shape_function
from reroute.config import keep_count
from reroute.runtime.dims import decoder_dims, paper_layer_flops

@dataclass(frozen=True)
class Solution:
    """What the solver found: the shape's parameter, the ratios, and what they achieve.

    ``avg_t`` is the continuous avg_T (equal to the target up to float precision);
    ``avg_t_integer`` the avg_T of the keep counts a routed forward really uses.
    ``flops_fraction`` is set when the target was a fraction of vanilla decoder FLOPs
    (paper formula, continuous counts).
    """

    shape: str
    param: float
    decision_layers: tuple[int, ...]
    keep_ratios: tuple[float, ...]
    num_layers: int
    num_visual: int
    avg_t: float
    avg_t_integer: float
    keep_counts: tuple[int, ...]
    flops_fraction: float | None = None


def _bisect(objective: Callable[[float], float], target: float, describe: Callable[[float, float], str]) -> float:
    """The p in (0, 1] where the increasing ``objective(p)`` equals ``target``."""
    low, high = 0.0, 1.0
    f_low, f_high = objective(low), objective(high)
    if not (f_low < target <= f_high * (1 + 1e-12)):
        raise ValueError(describe(f_low, f_high))
    if target >= f_high:
        return high
    for _ in range(200):
        mid = 0.5 * (low + high)
        if mid in (low, high):  # no float left between them
            break
        if objective(mid) < target:
            low = mid
        else:
            high = mid
    # the end point nearer the target (both bracket it)
    return high if abs(objective(high) - target) <= abs(objective(low) - target) else low


def solve(
    shape: str | Shape,
    decision_layers: Sequence[int],
    num_layers: int,
    target_avg_t: float | None = None,
    *,
    num_visual: int = REFERENCE_NUM_VISUAL,
    target_flops_fraction: float | None = None,
    model: Any = None,
    num_text: int = 64,
) -> Solution:
    """Find the shape's parameter whose ratios hit a budget exactly (continuous counts).

    Give exactly one target:

    - ``target_avg_t``: the avg_T in tokens (e.g. a tier: 192, 128, 64 for 576 tokens);
    - ``target_flops_fraction``: a fraction of the vanilla decoder FLOPs (paper formula,
      ``4nd^2 + 2n^2d + 2ndm`` per layer with ``n = num_text + visual``); needs ``model=``
      (a model, a transformers config or a ``reroute.runtime.dims.DecoderDims``) for ``d`` and ``m``.

    Works for any depth and any number of decisions; raises a ValueError naming what to
    change when the target cannot be reached (the layers before the first decision already
    cost more than the target, or the shape cannot keep enough tokens).
    """
    name, fn = shape_function(shape)
    layers = tuple(int(d) for d in decision_layers)
    check_schedule(layers, fn(0.5, len(layers)), num_layers)
    if layers[0] < 1:
        raise ValueError(f"decision layer {layers[0]} is not allowed: layer 0 always sees every token; use layers >= 1")
    if (target_avg_t is None) == (target_flops_fraction is None):
        raise ValueError("give exactly one of target_avg_t and target_flops_fraction")

    def avg(p: float) -> float:
        return schedule_avg_t(layers, fn(p, len(layers)), num_layers, num_visual)

    flops_fraction: Callable[[float], float] | None = None
    if target_avg_t is not None:
        target, objective, what = float(target_avg_t), avg, "avg_T"
    else:
        if model is None:
            raise ValueError(
                "target_flops_fraction needs the model's dimensions: pass model= (a model, config or DecoderDims)"
            )
        dims = decoder_dims(model)
        vanilla = num_layers * paper_layer_flops(num_text + num_visual, dims)

        def flops_fraction(p: float) -> float:
            counts = visual_counts(layers, fn(p, len(layers)), num_layers, num_visual)
            return math.fsum(paper_layer_flops(num_text + c, dims) for c in counts) / vanilla

        target, objective, what = float(target_flops_fraction), flops_fraction, "FLOPs fraction"

    def describe(f_low: float, f_high: float) -> str:
        if target <= f_low:
            return (
                f"target {what} {target:g} is not reachable: with the first decision at layer {layers[0]} of "
                f"{num_layers}, the layers before it alone give {f_low:.4g}; decide earlier or raise the target"
            )
        return (
            f"target {what} {target:g} is above the most the {name} shape keeps on layers {layers} "
            f"({f_high:.4g} at parameter 1); lower the target"
        )

    p = _bisect(objective, target, describe)
    ratios = fn(p, len(layers))
    return Solution(
        shape=name,
        param=p,
        decision_layers=layers,
        keep_ratios=ratios,
        num_layers=num_layers,
        num_visual=num_visual,
        avg_t=avg(p),
        avg_t_integer=schedule_avg_t(layers, ratios, num_layers, num_visual, integer=True),
        keep_counts=tuple(keep_count(num_visual, r) for r in ratios),
        flops_fraction=flops_fraction(p) if flops_fraction is not None else None,
    )
