"""avg_T: the visual tokens taking part in each decoder layer, averaged over all layers (docs/semantics.md §1).

A budget is an **avg_T** (layers before the first decision see all ``N_vis``). Both the
decoder's FLOPs and its KV cache follow from the per-layer counts, so avg_T is what makes two
schedules comparable. Two counts exist for every schedule:

- **continuous**: ``N_vis * r_s`` tokens per stage. This is how the paper's tiers are
  defined, and what the solver matches exactly.
- **integer**: ``k_s = keep_count(N_vis, r_s) = max(1, floor(N_vis * r_s))``, what a routed
  forward really keeps. Its avg_T is slightly below the continuous one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from reroute.config import RoutingConfig, keep_count
from reroute.registry import VISION_STAGES

#: LLaVA-1.5 at 336 px: the visual-token count the paper's tiers refer to.
REFERENCE_NUM_VISUAL = 576


def check_schedule(decision_layers: Sequence[int], keep_ratios: Sequence[float], num_layers: int) -> None:
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
    """Visual tokens taking part in every decoder layer (docs/semantics.md §1).

    ``integer=False`` gives the continuous counts ``N_vis * r_s`` (the paper's convention for
    its tiers); ``integer=True`` the counts a routed forward really keeps (``keep_count``).
    """
    check_schedule(decision_layers, keep_ratios, num_layers)
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
    if config.stage_visual_counts(num_visual) != config.keep_counts(num_visual):
        # a recycling scorer's merged tokens take part too (docs/semantics.md §21): integer counts, added to both
        added = [a - k for a, k in zip(config.stage_visual_counts(num_visual), config.keep_counts(num_visual))]
        extra = math.fsum(added[s] for i in range(num_layers) if (s := config.stage_of_layer(i)) >= 0)
        plain = schedule_avg_t(config.decision_layers, config.keep_ratios, num_layers, num_visual, integer=integer)
        return plain + extra / num_layers
    if config.vision_stage is not None:
        # Counts start from what the vision stage lets into the decoder (keep ratios are fractions of it).
        if integer:
            return math.fsum(config.visual_counts_per_layer(num_visual, num_layers)) / num_layers
        num_visual = VISION_STAGES.get(config.vision_stage).kept_continuous(num_visual, dict(config.vision_params))
    return schedule_avg_t(config.decision_layers, config.keep_ratios, num_layers, num_visual, integer=integer)
