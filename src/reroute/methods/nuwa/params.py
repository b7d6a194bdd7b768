"""Nüwa's budgets (docs/semantics.md §6): how many candidates per 2 x 2 cell, anchors after stage 1, tokens after stage 2.

LLaVA-1.5 uses fixed counts per tier (576 visual tokens, avg_T = (K + k) / 2); Qwen2.5-VL's
token count varies per image, so its budgets are a ratio rule applied to each image's count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class NuwaParams:
    """Nüwa's counts for one image.

    per_cell: ``n``, candidates kept in each 2 x 2 cell of the grid (1..4).
    anchors: ``K``, tokens kept by stage 1 (the global top-K candidates).
    keep: ``k``, visual tokens kept by stage 2 inside the decoder (1..K).
    """

    per_cell: int
    anchors: int
    keep: int

    def __post_init__(self) -> None:
        if not 1 <= self.per_cell <= 4:
            raise ValueError(f"NuwaParams: per_cell={self.per_cell} is not in 1..4 (a 2 x 2 cell has 4 patches); pass 1, 2, 3 or 4")
        if self.anchors < 1:
            raise ValueError(f"NuwaParams: anchors={self.anchors} must be at least 1; pass a positive K")
        if not 1 <= self.keep <= self.anchors:
            raise ValueError(
                f"NuwaParams: keep={self.keep} is not in 1..anchors={self.anchors}; stage 2 keeps at most the K stage-1 tokens"
            )


#: LLaVA-1.5's visual tokens per image (336 px, 24 x 24 patches): the count Nüwa's LLaVA tiers are
#: published for (the same count as the Reroute paper's reference, `reroute.budgets.REFERENCE_NUM_VISUAL`)
LLAVA_NUM_VISUAL = 576

#: LLaVA-1.5 tiers (docs/semantics.md §6 "Budgets"): avg_T -> (n, K, k); avg_T = (K + k) / 2.
LLAVA_TIERS: dict[int, NuwaParams] = {
    64: NuwaParams(per_cell=1, anchors=112, keep=16),
    128: NuwaParams(per_cell=2, anchors=224, keep=32),
    192: NuwaParams(per_cell=3, anchors=336, keep=48),
}


def llava_params(tier: int) -> NuwaParams:
    """Nüwa's published LLaVA-1.5 budget for an avg_T tier (64, 128 or 192)."""
    if tier not in LLAVA_TIERS:
        raise ValueError(f"Nüwa has no LLaVA-1.5 budget for tier {tier}; pass one of {sorted(LLAVA_TIERS)}")
    return LLAVA_TIERS[tier]


@dataclass(frozen=True)
class NuwaRatios:
    """Qwen2.5-VL's budget rule: fractions of each image's merged-token count.

    stage1_fraction: ``K = ceil(N * stage1_fraction)`` for an image of ``N`` merged tokens.
    per_cell: ``n``.
    stage2_fraction: ``k = floor(K * stage2_fraction)`` (at least 1), a fraction of the stage-1 count.
    """

    stage1_fraction: float
    per_cell: int
    stage2_fraction: float

    def __post_init__(self) -> None:
        for name in ("stage1_fraction", "stage2_fraction"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"NuwaRatios: {name}={value} is not in (0, 1]; pass a fraction of the tokens to keep")
        if not 1 <= self.per_cell <= 4:
            raise ValueError(f"NuwaRatios: per_cell={self.per_cell} is not in 1..4; pass 1, 2, 3 or 4")

    def anchors(self, num_tokens: int) -> int:
        """``K`` for an image of ``num_tokens`` merged tokens."""
        # round first: 0.35 * 100 is 35.00000000000001 in floating point and ceil would give 36
        return max(1, math.ceil(round(num_tokens * self.stage1_fraction, 9)))

    def stage2_keep(self, num_stage1_tokens: int) -> int:
        """``k`` for ``num_stage1_tokens`` tokens left after stage 1 (a sample's total when it has several images)."""
        return max(1, math.floor(round(num_stage1_tokens * self.stage2_fraction, 9)))

    def params(self, num_tokens: int) -> NuwaParams:
        """Counts for one image of ``num_tokens`` merged tokens."""
        anchors = self.anchors(num_tokens)
        return NuwaParams(per_cell=self.per_cell, anchors=anchors, keep=self.stage2_keep(anchors))


#: Qwen2.5-VL keep ratios (docs/semantics.md §6): 0.25 / 0.5 / 0.75 -> (stage-1 fraction, n, stage-2 fraction of K).
QWEN_RATIOS: dict[float, NuwaRatios] = {
    0.25: NuwaRatios(stage1_fraction=0.35, per_cell=3, stage2_fraction=0.42),
    0.5: NuwaRatios(stage1_fraction=0.6, per_cell=3, stage2_fraction=0.66),
    0.75: NuwaRatios(stage1_fraction=0.85, per_cell=4, stage2_fraction=0.70),
}


def qwen_ratios(keep: float) -> NuwaRatios:
    """Nüwa's published Qwen2.5-VL rule for an overall keep ratio (0.25, 0.5 or 0.75)."""
    if keep not in QWEN_RATIOS:
        raise ValueError(f"Nüwa has no Qwen2.5-VL rule for keep ratio {keep}; pass one of {sorted(QWEN_RATIOS)}")
    return QWEN_RATIOS[keep]
