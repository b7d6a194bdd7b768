"""The `sparsevlm` and `reroute_vs_sparsevlm` presets (docs/semantics.md §21).

SparseVLM+ (v2.0, Gumpest/SparseVLMs main since 9e376ce) prunes after layers 2, 6 and 15 of
LLaVA-1.5's 32 (our decisions at 3, 7 and 16, scored with the layer before) to a count table
per budget. ``ratios="paper"`` returns that table over 576 verbatim; run, it gives avg_T
206.75 / 144.125 / 81.8125 at tiers 192 / 128 / 64 (the official log counts each scoring
layer at its pruned count although it ran on every token). ``ratios="solved"`` (default)
scales the table of the nearest published tier by one factor so that the continuous avg_T
equals the tier on the model's depth. `reroute_vs_sparsevlm` is the same schedule and scorer
under ``reroute``: the same per-layer counts, so the same avg_T, FLOPs and KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reroute.budgets.depth import REFERENCE_NUM_LAYERS, scale_decision_layers
from reroute.budgets.presets import register_preset
from reroute.budgets.solver import solve
from reroute.config import RoutingConfig

#: our decision layers on LLaVA-1.5 (pruning after the official layers 2, 6, 15)
DECISION_LAYERS = (3, 7, 16)
PUBLISHED_NUM_VISUAL = 576
#: SparseVLM+ (v2.0) tokens kept after layers 2, 6, 15, per tier (llava/model/language_model/score.py, V2_0)
COUNT_TABLE: dict[int, tuple[int, int, int]] = {192: (300, 200, 118), 128: (238, 108, 60), 64: (66, 34, 20)}


def nearest_table(tier: float, num_visual: int) -> tuple[int, int, int]:
    """The published count table whose tier is the nearest fraction of the visual tokens (ties: the larger tier)."""
    fraction = tier / num_visual
    best = min(COUNT_TABLE, key=lambda t: (abs(t / PUBLISHED_NUM_VISUAL - fraction), -t))
    return COUNT_TABLE[best]


def table_shape(table: tuple[int, ...]):
    """The schedule shape ``p * table / table[0]`` (increasing in ``p``, ratios in (0, 1])."""

    def shape(p: float, num_decisions: int) -> tuple[float, ...]:
        return tuple(p * count / table[0] for count in table[:num_decisions])

    shape.__name__ = "sparsevlm_table"
    return shape


@dataclass(frozen=True)
class SparseVLMPreset:
    """``sparsevlm`` (remove) or ``reroute_vs_sparsevlm`` (reroute): SparseVLM+'s schedule and scorer."""

    name: str
    action: str
    counterpart: str | None = None

    def build(self, tier: float, model: Any, depth: int, ratios: str, num_visual: int) -> RoutingConfig:
        """The config at ``tier`` on a decoder of ``depth`` layers (see `reroute.budgets.presets.PresetSpec.build`)."""
        layers = scale_decision_layers(DECISION_LAYERS, depth, REFERENCE_NUM_LAYERS)
        if ratios == "paper":
            if tier not in COUNT_TABLE:
                published = ", ".join(str(t) for t in COUNT_TABLE)
                raise ValueError(
                    f"ratios='paper' has no SparseVLM table for tier {tier}: SparseVLM publishes tiers {published}; "
                    "use ratios='solved' for other tiers"
                )
            keep = tuple(count / PUBLISHED_NUM_VISUAL for count in COUNT_TABLE[tier])
        elif ratios == "solved":
            shape = table_shape(nearest_table(tier, num_visual))
            keep = solve(shape, layers, depth, target_avg_t=tier, num_visual=num_visual).keep_ratios
        else:
            raise ValueError(f"ratios must be 'solved' or 'paper', got {ratios!r}")
        return RoutingConfig(action=self.action, decision_layers=layers, keep_ratios=keep, scorer="sparsevlm")

    def refusal(self, model: Any) -> str | None:
        """SparseVLM runs on every family (our own design beyond LLaVA, docs/semantics.md §21)."""
        return None


SPARSEVLM = register_preset(SparseVLMPreset("sparsevlm", "remove", counterpart="reroute_vs_sparsevlm"))
REROUTE_VS_SPARSEVLM = register_preset(SparseVLMPreset("reroute_vs_sparsevlm", "reroute"))
#: the presets this folder registers
SPARSEVLM_PRESETS: tuple[str, ...] = (SPARSEVLM.name, REROUTE_VS_SPARSEVLM.name)
