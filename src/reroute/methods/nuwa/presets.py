"""The `nuwa` and `nuwa_reroute` presets (docs/semantics.md §6): Nüwa's stage 1, then one remove decision
(`nuwa`) or reroute decisions (`nuwa_reroute`) with Nüwa's stage-2 scoring rule.

Published settings:

- LLaVA-1.5 (32 layers, 576 tokens): decision at layer 16 (scored with layer 15), tiers
  64 / 128 / 192 -> (n, K, k) = (1, 112, 16), (2, 224, 32), (3, 336, 48); `nuwa_reroute`
  decides at 16 and 24, each keeping ``k``.
- Qwen2.5-VL (28 layers): decision at layer 15 (scored with layer 14); per-image rules for
  overall keep 0.25 / 0.5 / 0.75 -> ``K = ceil(N f1)``, ``n``, ``k = floor(K f2)``;
  `nuwa_reroute` decides at 15 and 22.

``ratios="paper"`` returns those settings (LLaVA: tiers 64/128/192; Qwen: ``tier / num_visual``
one of 0.25 / 0.5 / 0.75). ``ratios="solved"`` (the default) keeps LLaVA's proportions
(``k = K / 7``, ``n = 1, 2, 3`` for a tier of 1/9, 2/9, 3/9 of the tokens) and solves ``K`` so
that the continuous avg_T equals the tier on the model's depth:
``(d K + (D - d) K / 7) / D = tier`` with ``d`` the (scaled) first decision layer. On LLaVA-1.5
it reproduces the published counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from reroute.budgets.depth import scale_decision_layers
from reroute.budgets.presets import register_preset
from reroute.config import RoutingConfig
from reroute.methods.nuwa.params import LLAVA_NUM_VISUAL, LLAVA_TIERS, QWEN_RATIOS
from reroute.methods.nuwa.parts import CLIP_CLS, QWEN2_5_VIT, nuwa_tower


@dataclass(frozen=True)
class _Published:
    """Nüwa's published setting for one tower kind: decision layers on the reference depth, the scorer."""

    reference_depth: int
    nuwa_layers: tuple[int, ...]
    reroute_layers: tuple[int, ...]
    scorer: str


#: per tower kind the family adapter declares (`reroute.backbones.base.Backbone.nuwa_tower`)
_PUBLISHED: dict[str, _Published] = {
    CLIP_CLS: _Published(32, (16,), (16, 24), "nuwa_llava"),
    QWEN2_5_VIT: _Published(28, (15,), (15, 22), "nuwa_qwen"),
}
#: LLaVA-1.5's published k / K at every tier
STAGE2_FRACTION = 1 / 7
_EPS = 1e-9


def nuwa_family(model: Any) -> str:
    """The tower kind whose published settings apply to ``model`` (a model, a config, or a bare layer
    count / None: the paper's LLaVA-1.5); a one-line ValueError for a family whose adapter declares none."""
    if model is None or isinstance(model, int):
        return CLIP_CLS
    return nuwa_tower(model)


def publishes_keep_ratios(model: Any) -> bool:
    """True where Nüwa publishes overall keep ratios (0.25 / 0.5 / 0.75) rather than tiers (Qwen2.5-VL)."""
    return nuwa_family(model) == QWEN2_5_VIT


@dataclass(frozen=True)
class NuwaPreset:
    """``nuwa`` (one remove decision) or ``nuwa_reroute`` (reroute decisions), each after Nüwa's stage 1."""

    name: str
    action: str
    counterpart: str | None = None

    def build(self, tier: float, model: Any, depth: int, ratios: str, num_visual: int) -> RoutingConfig:
        """The config at ``tier`` on a decoder of ``depth`` layers (see `reroute.budgets.presets.PresetSpec.build`)."""
        family = nuwa_family(model)
        published = _PUBLISHED[family]
        layers = published.nuwa_layers if self.action == "remove" else published.reroute_layers
        layers = scale_decision_layers(layers, depth, published.reference_depth)
        if ratios == "paper":
            per_cell, fraction, stage2 = _paper(family, tier, num_visual)
        elif ratios == "solved":
            per_cell, fraction, stage2 = _solved(tier, num_visual, layers[0], depth)
        else:
            raise ValueError(f"ratios must be 'solved' or 'paper', got {ratios!r}")
        return RoutingConfig(
            action=self.action,
            decision_layers=layers,
            keep_ratios=(stage2,) * len(layers),
            scorer=published.scorer,
            vision_stage="nuwa",
            vision_params={"keep_fraction": fraction, "per_cell": per_cell},
        )

    def refusal(self, model: Any) -> str | None:
        """Why Nüwa cannot run on ``model`` (its family declares no tower Nüwa knows), or None."""
        try:
            nuwa_family(model)
        except (TypeError, ValueError) as error:
            return str(error)
        return None


NUWA = register_preset(NuwaPreset("nuwa", "remove", counterpart="nuwa_reroute"))
NUWA_REROUTE = register_preset(NuwaPreset("nuwa_reroute", "reroute"))
#: the presets this folder registers
NUWA_PRESETS: tuple[str, ...] = (NUWA.name, NUWA_REROUTE.name)


def _paper(family: str, tier: float, num_visual: int) -> tuple[int, float, float]:
    if family == CLIP_CLS:
        if tier not in LLAVA_TIERS:
            raise ValueError(
                f"ratios='paper' has no Nüwa setting for tier {tier} on LLaVA: Nüwa publishes tiers "
                f"{', '.join(str(t) for t in sorted(LLAVA_TIERS))}; use ratios='solved' for other tiers"
            )
        p = LLAVA_TIERS[tier]
        return p.per_cell, p.anchors / LLAVA_NUM_VISUAL, p.keep / p.anchors
    keep = round(tier / num_visual, 9)
    if keep not in QWEN_RATIOS:
        raise ValueError(
            f"ratios='paper' has no Nüwa setting for keep {keep:g} (tier {tier:g} of {num_visual}) on Qwen2.5-VL: "
            "Nüwa publishes overall keep 0.25, 0.5 and 0.75 (tier = keep x num_visual); use ratios='solved'"
        )
    r = QWEN_RATIOS[keep]
    return r.per_cell, r.stage1_fraction, r.stage2_fraction


def _solved(tier: float, num_visual: int, first_decision: int, depth: int) -> tuple[int, float, float]:
    anchors = tier * depth / (first_decision + (depth - first_decision) * STAGE2_FRACTION)
    fraction = anchors / num_visual
    if not 0.0 < fraction <= 1.0:
        raise ValueError(
            f"Nüwa cannot reach tier {tier:g} of {num_visual} visual tokens: stage 1 would keep {anchors:.1f} tokens; "
            f"use a tier of at most {num_visual * (first_decision + (depth - first_decision) * STAGE2_FRACTION) / depth:.1f}"
        )
    per_cell = min(4, max(1, math.ceil(9 * tier / num_visual - _EPS)))
    per_cell = max(per_cell, min(4, math.ceil(fraction * 4 - _EPS)))  # enough candidates for K
    return per_cell, fraction, STAGE2_FRACTION
