"""Budgets, schedule shapes, the budget solver and the presets (SPEC §1, §4).

A budget is an **avg_T**: the mean over *all* decoder layers of the visual tokens that take
part in a layer (layers before the first decision see all ``N_vis``). Both the decoder's
FLOPs and its KV cache follow from the per-layer counts, so avg_T is what makes two
schedules comparable. The paper publishes keep ratios for LLaVA-1.5's 32 layers; on
another depth, or for another budget, the same *shape* of schedule needs other numbers.
This module turns a shape (one free parameter) into ratios that hit a target exactly.

Two counts exist for every schedule:

- **continuous**: ``N_vis * r_s`` tokens per stage. This is how the paper's tiers are
  defined, and what the solver matches exactly.
- **integer**: ``k_s = keep_count(N_vis, r_s) = max(1, floor(N_vis * r_s))``, what a routed
  forward really keeps. Its avg_T is slightly below the continuous one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from reroute.config import RoutingConfig, keep_count
from reroute.dims import decoder_dims, paper_layer_flops, text_config
from reroute.methods import get_vision_stage
from reroute.nuwa_presets import NUWA_PRESETS, nuwa_preset

#: LLaVA-1.5's decoder depth: the depth the paper's decision layers are published for.
REFERENCE_NUM_LAYERS = 32
#: LLaVA-1.5 at 336 px: the visual-token count the paper's tiers refer to.
REFERENCE_NUM_VISUAL = 576
#: the tiers (avg_T) with published ratios
PAPER_TIERS: tuple[int, ...] = (192, 128, 64)


# --------------------------------------------------------------------------------------
# avg_T of a schedule
# --------------------------------------------------------------------------------------


def _check_schedule(decision_layers: Sequence[int], keep_ratios: Sequence[float], num_layers: int) -> None:
    if len(decision_layers) != len(keep_ratios):
        raise ValueError(
            f"{len(keep_ratios)} keep ratios for {len(decision_layers)} decision layers: "
            "give one ratio per decision layer"
        )
    if not decision_layers:
        raise ValueError("the schedule has no decision layer: give at least one")
    if any(b <= a for a, b in zip(decision_layers, decision_layers[1:])):
        raise ValueError(f"decision layers must be strictly increasing, got {tuple(decision_layers)}")
    if decision_layers[0] < 0 or decision_layers[-1] >= num_layers:
        raise ValueError(
            f"decision layers {tuple(decision_layers)} lie outside the decoder's layers 0..{num_layers - 1}: "
            f"use layers below num_layers={num_layers}"
        )


def visual_counts(
    decision_layers: Sequence[int],
    keep_ratios: Sequence[float],
    num_layers: int,
    num_visual: int = REFERENCE_NUM_VISUAL,
    *,
    integer: bool = False,
) -> tuple[float, ...]:
    """Visual tokens taking part in every decoder layer (SPEC §1).

    ``integer=False`` gives the continuous counts ``N_vis * r_s`` (the paper's convention for
    its tiers); ``integer=True`` the counts a routed forward really keeps (``keep_count``).
    """
    _check_schedule(decision_layers, keep_ratios, num_layers)
    per_stage = [keep_count(num_visual, r) if integer else num_visual * r for r in keep_ratios]
    counts: list[float] = []
    stage = -1
    for layer in range(num_layers):
        while stage + 1 < len(decision_layers) and layer >= decision_layers[stage + 1]:
            stage += 1
        counts.append(num_visual if stage < 0 else per_stage[stage])
    return tuple(counts)


def schedule_avg_t(
    decision_layers: Sequence[int],
    keep_ratios: Sequence[float],
    num_layers: int,
    num_visual: int = REFERENCE_NUM_VISUAL,
    *,
    integer: bool = False,
) -> float:
    """avg_T of a schedule given as raw layers and ratios (any ratios, also outside (0, 1])."""
    counts = visual_counts(decision_layers, keep_ratios, num_layers, num_visual, integer=integer)
    return math.fsum(counts) / num_layers


def avg_t(
    config: RoutingConfig | None,
    num_layers: int,
    num_visual: int = REFERENCE_NUM_VISUAL,
    *,
    integer: bool = False,
) -> float:
    """avg_T of a routing config on a decoder of ``num_layers`` layers (``None``: vanilla, ``N_vis``)."""
    if config is None:
        return float(num_visual)
    if config.vision_stage is not None:
        # Counts start from what the vision stage lets into the decoder (keep ratios are fractions of it).
        if integer:
            return math.fsum(config.visual_counts_per_layer(num_visual, num_layers)) / num_layers
        num_visual = get_vision_stage(config.vision_stage).kept_continuous(num_visual, dict(config.vision_params))
    return schedule_avg_t(config.decision_layers, config.keep_ratios, num_layers, num_visual, integer=integer)


# --------------------------------------------------------------------------------------
# schedule shapes: ratios as a function of one free parameter p in (0, 1]
# --------------------------------------------------------------------------------------

#: A shape maps (parameter, number of decisions) to keep ratios. Every shape here is
#: increasing in the parameter and gives ratios in (0, 1] for p in (0, 1], so avg_T is a
#: strictly increasing function of p and bisection finds the unique solution.
Shape = Callable[[float, int], tuple[float, ...]]


def constant_shape(p: float, num_decisions: int) -> tuple[float, ...]:
    """FastV-shaped: the same ratio ``r = p`` at every decision."""
    return (p,) * num_decisions


def geometric_shape(p: float, num_decisions: int) -> tuple[float, ...]:
    """PDrop-shaped: ``r_s = lambda^s`` for s = 1..S with ``lambda = p``."""
    return tuple(p ** (s + 1) for s in range(num_decisions))


def halving_shape(p: float, num_decisions: int) -> tuple[float, ...]:
    """Reroute-vs-PDrop-shaped: ``a, a, a/2, a/4, ...`` with ``a = p``.

    The published four-decision set is (a, a, a/2, a/4); with S decisions the first two
    stay at ``a`` and every later one halves the previous (S = 1 gives just ``a``).
    """
    return tuple(p if s == 0 else p / 2 ** (s - 1) for s in range(num_decisions))


SHAPES: dict[str, Shape] = {
    "constant": constant_shape,
    "geometric": geometric_shape,
    "halving": halving_shape,
}


def _shape(shape: str | Shape) -> tuple[str, Shape]:
    if callable(shape):
        return getattr(shape, "__name__", "custom"), shape
    if shape not in SHAPES:
        raise ValueError(f"unknown schedule shape {shape!r}: use one of {', '.join(SHAPES)} (or pass a function)")
    return shape, SHAPES[shape]


# --------------------------------------------------------------------------------------
# the solver
# --------------------------------------------------------------------------------------


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
      (a model, a transformers config or a ``reroute.dims.DecoderDims``) for ``d`` and ``m``.

    Works for any depth and any number of decisions; raises a ValueError naming what to
    change when the target cannot be reached (the layers before the first decision already
    cost more than the target, or the shape cannot keep enough tokens).
    """
    name, fn = _shape(shape)
    layers = tuple(int(d) for d in decision_layers)
    _check_schedule(layers, fn(0.5, len(layers)), num_layers)
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


# --------------------------------------------------------------------------------------
# decision layers on other depths
# --------------------------------------------------------------------------------------


def scale_decision_layers(
    layers: Sequence[int], num_layers: int, reference_num_layers: int = REFERENCE_NUM_LAYERS
) -> tuple[int, ...]:
    """Move decision layers published for a ``reference_num_layers``-layer decoder to ``num_layers``.

    Each layer ``d`` goes to ``round(d * num_layers / reference)``, halves rounding up
    (exact integer arithmetic, so the result never depends on float noise): on 28 layers
    (3, 7, 15, 23) -> (3, 6, 13, 20) and (2, 7, 15, 23) -> (2, 6, 13, 20), Qwen2.5-VL's
    published layers. Then collisions are resolved deterministically so the layers stay
    strictly increasing inside [1, num_layers - 1]:

    1. clamp every layer into [1, num_layers - 1];
    2. left to right, a layer that is not above its predecessor moves to predecessor + 1;
    3. right to left, a layer that is not below its successor (or past the last layer)
       moves to successor - 1.

    So on 8 layers (3, 7, 15, 23) -> (1, 2, 4, 6). A depth with fewer than
    ``len(layers) + 1`` layers cannot hold the schedule and raises.
    """
    count = len(layers)
    if num_layers < count + 1:
        raise ValueError(
            f"a {count}-decision schedule needs at least {count + 1} decoder layers (decisions at layers 1.."
            f"num_layers-1), got num_layers={num_layers}; use a deeper model or a schedule with fewer decisions"
        )
    scaled = [(2 * d * num_layers + reference_num_layers) // (2 * reference_num_layers) for d in layers]
    scaled = [min(max(d, 1), num_layers - 1) for d in scaled]
    for i in range(1, count):
        scaled[i] = max(scaled[i], scaled[i - 1] + 1)
    upper = num_layers
    for i in reversed(range(count)):
        scaled[i] = min(scaled[i], upper - 1)
        upper = scaled[i]
    return tuple(scaled)


def num_decoder_layers(model: Any) -> int:
    """The decoder's layer count of a model, a transformers config, or an int."""
    if isinstance(model, int) and not isinstance(model, bool):
        return model
    layers = getattr(text_config(model), "num_hidden_layers", None)
    if not isinstance(layers, int):
        raise ValueError(
            f"cannot find the decoder's layer count in {type(model).__name__}: pass a transformers model or config "
            "with text_config.num_hidden_layers, or num_layers=<int>"
        )
    return layers


# --------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PresetSpec:
    """A published method: action, decision layers on LLaVA's 32 layers, shape, published ratios."""

    name: str
    action: Literal["remove", "reroute"]
    reference_layers: tuple[int, ...]
    shape: str
    paper_ratios: dict[int, tuple[float, ...]]


PRESETS: dict[str, PresetSpec] = {
    spec.name: spec
    for spec in (
        PresetSpec(
            "fastv",
            "remove",
            (3,),
            "constant",
            {192: (0.2644,), 128: (0.1418,), 64: (0.01916,)},
        ),
        PresetSpec(
            "pdrop",
            "remove",
            (2, 7, 15, 23),
            "geometric",
            {
                192: (0.5965, 0.3558, 0.2123, 0.1266),
                128: (0.4570, 0.2088, 0.0954, 0.0436),
                64: (0.2789, 0.0937, 0.0315, 0.0106),  # not of the geometric shape; avg_T 80.8, not 64
            },
        ),
        PresetSpec(
            "reroute_vs_fastv",
            "reroute",
            (3, 7, 15, 23),
            "constant",
            {192: (0.2644,) * 4, 128: (0.1418,) * 4, 64: (0.01916,) * 4},
        ),
        PresetSpec(
            "reroute_vs_pdrop",
            "reroute",
            (2, 7, 15, 23),
            "halving",
            {
                192: (0.4502, 0.4502, 0.2251, 0.1126),
                128: (0.2655, 0.2655, 0.1328, 0.0664),
                64: (0.1392, 0.1392, 0.0696, 0.0348),  # avg_T 84.2, not 64
            },
        ),
    )
}


def preset(
    name: str,
    tier: float,
    model: Any = None,
    ratios: Literal["solved", "paper"] = "solved",
    num_layers: int | None = None,
    *,
    num_visual: int = REFERENCE_NUM_VISUAL,
) -> RoutingConfig:
    """A published schedule as a `RoutingConfig`, for any decoder depth (SPEC §4, §8).

    Args:
        name: "fastv", "pdrop", "reroute_vs_fastv", "reroute_vs_pdrop", "nuwa" or "nuwa_reroute"
            (the last two: see `reroute.nuwa_presets`).
        tier: the budget avg_T in visual tokens (192, 128, 64 are the paper's tiers for 576).
        model: a transformers VLM, its config, or the decoder's layer count. Without
            ``model`` and ``num_layers`` the paper's 32-layer LLaVA-1.5 decoder is assumed.
        ratios: ``"solved"`` (default) finds the preset's shape's ratios that hit ``tier``
            exactly (continuous counts) for this depth and ``num_visual``; ``"paper"`` returns
            the published ratios verbatim (tiers 192/128/64 only), which miss the tier on
            other depths and at PDrop-shaped tier 64 (see SPEC §4).
        num_layers: the decoder's layer count, instead of (or agreeing with) ``model``.
        num_visual: the visual-token count the tier refers to (default 576).

    Decision layers are the published ones scaled from 32 layers to this depth
    (`scale_decision_layers`).
    """
    if name not in PRESETS and name not in NUWA_PRESETS:
        raise ValueError(f"unknown preset {name!r}: use one of {', '.join((*PRESETS, *NUWA_PRESETS))}")
    depth = _resolve_depth(model, num_layers)
    if name in NUWA_PRESETS:  # a vision stage and Nüwa's scorer: reroute.nuwa_presets
        return nuwa_preset(name, tier, model, depth, ratios, num_visual)
    spec = PRESETS[name]
    layers = scale_decision_layers(spec.reference_layers, depth)
    if ratios == "paper":
        if tier not in spec.paper_ratios:
            published = ", ".join(str(t) for t in spec.paper_ratios)
            raise ValueError(
                f"ratios='paper' has no published set for tier {tier}: the paper publishes tiers {published}; "
                "use ratios='solved' for other tiers"
            )
        keep = spec.paper_ratios[tier]
    elif ratios == "solved":
        keep = solve(spec.shape, layers, depth, target_avg_t=tier, num_visual=num_visual).keep_ratios
    else:
        raise ValueError(f"ratios must be 'solved' or 'paper', got {ratios!r}")
    return RoutingConfig(action=spec.action, decision_layers=layers, keep_ratios=keep)


def _resolve_depth(model: Any, num_layers: int | None) -> int:
    if model is None and num_layers is None:
        return REFERENCE_NUM_LAYERS
    depth = num_decoder_layers(model) if model is not None else num_layers
    if num_layers is not None and depth != num_layers:
        raise ValueError(f"num_layers={num_layers} disagrees with the model's {depth} decoder layers: pass one of them")
    assert depth is not None
    return depth
