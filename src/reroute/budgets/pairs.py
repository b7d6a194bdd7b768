"""Remove and reroute at the same budget: each registered preset's counterpart, at the paper's tiers scaled to a prompt."""

from __future__ import annotations

from collections.abc import Sequence
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


#: the methods the Reroute paper compares (each a removal preset, run with its rerouted counterpart)
PAPER_METHODS: tuple[str, ...] = ("fastv", "pdrop", "nuwa")


def resolve_methods(methods: Sequence[str] | None) -> tuple[str, ...]:
    """The removal presets to run (``None``: the paper's; ``["all"]``: every registered pair), checked.

    A method is a removal preset that names a rerouted counterpart (`reroute.budgets.counterparts`);
    anything else is a one-line ValueError naming the choices."""
    pairs = counterparts()
    if methods is None:
        return PAPER_METHODS
    if list(methods) == ["all"]:
        return tuple(pairs)
    chosen = tuple(dict.fromkeys(methods))
    removal_of = {ours: base for base, ours in pairs.items()}
    for method in chosen:
        if method in removal_of:  # a rerouted preset: its pair is named by the removal preset
            raise ValueError(f"{method!r} is {removal_of[method]}'s rerouted counterpart: name {removal_of[method]!r}")
        if method not in pairs:
            raise ValueError(f"unknown method {method!r}: use one of {', '.join(pairs)}, or all")
    if not chosen:
        raise ValueError(f"no method given: use one of {', '.join(pairs)}, or all")
    return chosen


def presets_of(methods: Sequence[str]) -> tuple[str, ...]:
    """The presets ``methods`` (removal presets) run: each and its rerouted counterpart, in registration order."""
    pairs = counterparts()
    chosen = {name for method in methods for name in (method, pairs[method])}
    return tuple(name for name in preset_names() if name in chosen)
