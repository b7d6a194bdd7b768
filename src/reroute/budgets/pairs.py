"""Remove and reroute at the same budget: each registered preset's counterpart, at the paper's tiers scaled to a prompt."""

from __future__ import annotations

from typing import Any

from reroute.budgets.counts import REFERENCE_NUM_VISUAL
from reroute.budgets.presets import counterparts, preset, preset_names
from reroute.config import RoutingConfig


def counterpart_of(name: str) -> str:
    """The preset with the other action at the same budget (``fastv`` <-> ``reroute_vs_fastv``)."""
    pairs = counterparts()
    both_ways = {**pairs, **{reroute: remove for remove, reroute in pairs.items()}}
    if name not in both_ways:
        raise ValueError(f"preset {name!r} has no counterpart: use one of {', '.join(paired_presets())}")
    return both_ways[name]


def paired_presets() -> tuple[str, ...]:
    """Every registered preset that has a counterpart, in registration order."""
    pairs = counterparts()
    paired = set(pairs) | set(pairs.values())
    return tuple(n for n in preset_names() if n in paired)


def preset_at_paper_tier(name: str, tier: float, model: Any, num_visual: int, ratios: str = "solved") -> RoutingConfig:
    """Preset ``name`` at the paper's tier ``tier`` (a budget out of 576 visual tokens), scaled to
    ``num_visual`` tokens: the same fraction of the prompt's visual tokens (docs/semantics.md §4)."""
    if ratios == "paper":
        return preset(name, tier, model=model, ratios="paper")
    return preset(name, tier * num_visual / REFERENCE_NUM_VISUAL, model=model, num_visual=num_visual)


def remove_and_reroute(
    name: str, tier: float, model: Any, num_visual: int, ratios: str = "solved"
) -> dict[str, RoutingConfig]:
    """``{"remove (pdrop)": ..., "reroute (reroute_vs_pdrop)": ...}``: the preset and its counterpart, remove first."""
    pair = [name, counterpart_of(name)]
    configs = {n: preset_at_paper_tier(n, tier, model, num_visual, ratios) for n in pair}
    ordered = sorted(pair, key=lambda n: configs[n].action != "remove")
    return {f"{configs[n].action} ({n})": configs[n] for n in ordered}
