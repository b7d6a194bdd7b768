"""The `sparsevlm`, `reroute_vs_sparsevlm`, `sparsevlm_v15` and `reroute_vs_sparsevlm_v15` presets (docs/semantics.md §21).

SparseVLM+ (v2.0, Gumpest/SparseVLMs main since 9e376ce) prunes after layers 2, 6 and 15 of
LLaVA-1.5's 32 (our decisions at 3, 7 and 16, scored with the layer before) to a count table
per budget. ``ratios="paper"`` returns that table over 576 verbatim; run, it gives avg_T
206.75 / 144.125 / 81.8125 at tiers 192 / 128 / 64 (the official log counts each scoring
layer at its pruned count although it ran on every token). ``ratios="solved"`` (default)
scales the table of the nearest published tier by one factor so that the continuous avg_T
equals the tier on the model's depth. `reroute_vs_sparsevlm` is the same schedule and scorer
under ``reroute``: the same per-layer counts, so the same avg_T, FLOPs and KV cache.

`sparsevlm_v15` is v1.5 (branch v1.5 = b9619e6): its own count table, and its recycling adds merged
tokens on top, which the budget counts; `reroute_vs_sparsevlm_v15` keeps at each stage what it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reroute.backbones import backbone_for_config
from reroute.budgets.counts import REFERENCE_NUM_VISUAL, avg_t
from reroute.budgets.depth import REFERENCE_NUM_LAYERS, num_decoder_layers, scale_decision_layers
from reroute.budgets.presets import register_preset
from reroute.budgets.solver import solve
from reroute.config import RoutingConfig
from reroute.methods.sparsevlm.parts import V15_PARAMS
from reroute.runtime.recycling import recycling_refusal

#: our decision layers on LLaVA-1.5 (pruning after the official layers 2, 6, 15)
DECISION_LAYERS = (3, 7, 16)
PUBLISHED_NUM_VISUAL = 576
#: SparseVLM+ (v2.0) tokens kept after layers 2, 6, 15, per tier (llava/model/language_model/score.py, V2_0)
COUNT_TABLE: dict[int, tuple[int, int, int]] = {192: (300, 200, 118), 128: (238, 108, 60), 64: (66, 34, 20)}
#: SparseVLM v1.5 (branch v1.5 = b9619e6, score.py): tokens kept after layers 2, 6, 15, merged tokens on top
V15_COUNT_TABLE: dict[int, tuple[int, int, int]] = {192: (300, 200, 110), 128: (303, 110, 36), 64: (66, 30, 17)}


def nearest_table(tier: float, num_visual: int, tables: dict = COUNT_TABLE) -> tuple[int, int, int]:
    """The published count table whose tier is the nearest fraction of the visual tokens (ties: the larger tier)."""
    fraction = tier / num_visual
    best = min(tables, key=lambda t: (abs(t / PUBLISHED_NUM_VISUAL - fraction), -t))
    return tables[best]


def published_ratios(tier: float, table: dict, version: str) -> tuple[float, ...]:
    """``ratios="paper"``: ``version``'s count table at ``tier`` verbatim, as fractions of 576 (one line where it has none)."""
    if tier not in table:
        published = ", ".join(str(t) for t in table)
        raise ValueError(
            f"ratios='paper' has no {version} table for tier {tier}: {version} publishes tiers {published}; "
            "use ratios='solved' for other tiers"
        )
    return tuple(count / PUBLISHED_NUM_VISUAL for count in table[tier])


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
            keep = published_ratios(tier, COUNT_TABLE, "SparseVLM")
        elif ratios == "solved":
            shape = table_shape(nearest_table(tier, num_visual))
            keep = solve(shape, layers, depth, target_avg_t=tier, num_visual=num_visual).keep_ratios
        else:
            raise ValueError(f"ratios must be 'solved' or 'paper', got {ratios!r}")
        return RoutingConfig(action=self.action, decision_layers=layers, keep_ratios=keep, scorer="sparsevlm")

    def refusal(self, model: Any) -> str | None:
        """SparseVLM runs on every family (our own design beyond LLaVA, docs/semantics.md §21)."""
        return None


def _solve_with_merged(shape, layers: tuple[int, ...], depth: int, tier: float, num_visual: int) -> tuple[float, ...]:
    """The shape's ratios whose avg_T with the merged tokens (continuous keep counts, integer merged
    counts) is nearest ``tier``: bisection on the parameter, as `reroute.budgets.solve` does."""

    def total(p: float) -> float:
        config = RoutingConfig("remove", layers, shape(p, len(layers)), scorer="sparsevlm_v15")
        return avg_t(config, depth, num_visual)

    low, high = 1e-9, 1.0
    if not total(low) < tier <= total(high):
        raise ValueError(
            f"tier {tier} is not reachable with SparseVLM v1.5's layers {layers} of {depth} "
            f"(avg_T {total(low):.4g} to {total(high):.4g}); choose a tier in that range"
        )
    for _ in range(100):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if total(mid) < tier else (low, mid)
    best = high if abs(total(high) - tier) <= abs(total(low) - tier) else low
    return shape(best, len(layers))


@dataclass(frozen=True)
class SparseVLMV15Preset:
    """``sparsevlm_v15`` (remove, recycling) or ``reroute_vs_sparsevlm_v15`` (reroute at its per-layer counts).

    v1.5's table keeps ``k_s`` visual tokens and its recycling adds merged ones on top, so the budget
    counts both (docs/semantics.md §21). The rerouted counterpart has no merged tokens: it keeps, at
    each stage, as many tokens as the removal preset runs there (kept plus merged), at ``num_visual``.
    """

    name: str
    action: str
    counterpart: str | None = None

    def removal(self, tier: float, depth: int, ratios: str, num_visual: int) -> RoutingConfig:
        layers = scale_decision_layers(DECISION_LAYERS, depth, REFERENCE_NUM_LAYERS)
        if ratios == "paper":
            keep = published_ratios(tier, V15_COUNT_TABLE, "SparseVLM v1.5")
        elif ratios == "solved":
            keep = _solve_with_merged(table_shape(nearest_table(tier, num_visual, V15_COUNT_TABLE)), layers, depth, tier, num_visual)
        else:
            raise ValueError(f"ratios must be 'solved' or 'paper', got {ratios!r}")
        return RoutingConfig(action="remove", decision_layers=layers, keep_ratios=keep, scorer="sparsevlm_v15")

    def build(self, tier: float, model: Any, depth: int, ratios: str, num_visual: int) -> RoutingConfig:
        """The config at ``tier`` on a decoder of ``depth`` layers (see `reroute.budgets.presets.PresetSpec.build`)."""
        removal = self.removal(tier, depth, ratios, num_visual)
        if self.action == "remove":
            return removal
        # the removal preset's per-stage counts (kept + merged) at num_visual, as keep ratios (floor gives them back)
        keep = tuple(count / num_visual for count in removal.stage_visual_counts(num_visual))
        return RoutingConfig(
            action="reroute", decision_layers=removal.decision_layers, keep_ratios=keep, scorer="sparsevlm",
            scorer_params=V15_PARAMS,
        )  # fmt: skip

    def refusal(self, model: Any) -> str | None:
        """Both presets of the pair (the counterpart's budget is the removal preset's) refuse families other than
        LLaVA-1.5 (the official code's; `recycling_refusal`) and decoders on which the merged tokens keep avg_T
        above the paper's lowest tier (docs/semantics.md §21)."""
        if model is not None and not isinstance(model, int):
            try:
                backbone = backbone_for_config(model)
            except (TypeError, ValueError) as error:
                return str(error)
            if (reason := recycling_refusal(backbone)) is not None:
                return reason
        depth = num_decoder_layers(model)
        try:
            self.removal(min(V15_COUNT_TABLE), depth, "solved", REFERENCE_NUM_VISUAL)
        except ValueError:
            return (
                f"on a {depth}-layer decoder SparseVLM v1.5's merged tokens keep avg_T above tier {min(V15_COUNT_TABLE)}"
                " (docs/semantics.md §21): use the sparsevlm presets"
            )
        return None


SPARSEVLM = register_preset(SparseVLMPreset("sparsevlm", "remove", counterpart="reroute_vs_sparsevlm"))
REROUTE_VS_SPARSEVLM = register_preset(SparseVLMPreset("reroute_vs_sparsevlm", "reroute"))
SPARSEVLM_V15 = register_preset(SparseVLMV15Preset("sparsevlm_v15", "remove", counterpart="reroute_vs_sparsevlm_v15"))
REROUTE_VS_SPARSEVLM_V15 = register_preset(SparseVLMV15Preset("reroute_vs_sparsevlm_v15", "reroute"))
#: the presets this folder registers
SPARSEVLM_PRESETS: tuple[str, ...] = (
    SPARSEVLM.name, REROUTE_VS_SPARSEVLM.name, SPARSEVLM_V15.name, REROUTE_VS_SPARSEVLM_V15.name,
)  # fmt: skip
