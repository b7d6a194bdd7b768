"""Remove and reroute at the same budget: each preset's counterpart, at the paper's tiers scaled to a prompt."""

from __future__ import annotations

from reroute.budgets import REFERENCE_NUM_VISUAL, preset
from reroute.config import RoutingConfig

#: each preset and its counterpart with the other action at the same budget (avg_T)
COUNTERPART = {
    "fastv": "reroute_vs_fastv",
    "reroute_vs_fastv": "fastv",
    "pdrop": "reroute_vs_pdrop",
    "reroute_vs_pdrop": "pdrop",
}
PRESET_NAMES = tuple(COUNTERPART)


def preset_at_paper_tier(name: str, tier: float, model, num_visual: int, ratios: str = "solved") -> RoutingConfig:
    """Preset ``name`` at the paper's tier ``tier`` (a budget out of 576 visual tokens), scaled to
    ``num_visual`` tokens: the same fraction of the prompt's visual tokens (docs/semantics.md §4)."""
    if ratios == "paper":
        return preset(name, tier, model=model, ratios="paper")
    return preset(name, tier * num_visual / REFERENCE_NUM_VISUAL, model=model, num_visual=num_visual)


def remove_and_reroute(name: str, tier: float, model, num_visual: int, ratios: str = "solved") -> dict[str, RoutingConfig]:
    """``{"remove (pdrop)": ..., "reroute (reroute_vs_pdrop)": ...}``: the preset and its counterpart, remove first."""
    pair = [name, COUNTERPART[name]]
    configs = {n: preset_at_paper_tier(n, tier, model, num_visual, ratios) for n in pair}
    ordered = sorted(pair, key=lambda n: configs[n].action != "remove")
    return {f"{configs[n].action} ({n})": configs[n] for n in ordered}
