"""Presets: a method's published schedule as a `RoutingConfig` for any model (docs/semantics.md §4).

Every method folder under `reroute.methods` registers its presets in `reroute.registry.PRESETS`
on import; `preset` looks them up, so every command offers every registered preset. A
removal preset names its rerouted ``counterpart`` at the same budget (``fastv`` ->
``reroute_vs_fastv``): the pairs the demo, ``paper-table`` and ``analyze`` compare.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from reroute.budgets.counts import REFERENCE_NUM_VISUAL
from reroute.budgets.depth import REFERENCE_NUM_LAYERS, resolve_depth, scale_decision_layers
from reroute.budgets.solver import solve
from reroute.config import RoutingConfig
from reroute.registry import PRESETS

#: the tiers (avg_T, of 576 visual tokens) with published ratios
PAPER_TIERS: tuple[int, ...] = (192, 128, 64)

Ratios = Literal["solved", "paper"]


@dataclass(frozen=True)
class PresetSpec:
    """A published schedule of one action: decision layers on a reference depth, a shape, published ratios.

    name: the preset's name (``reroute.preset(name, ...)``).
    action: the registered action it runs.
    reference_layers: decision layers on a decoder of ``reference_depth`` layers (scaled to others).
    shape: the schedule shape the solver keeps (`reroute.budgets.shapes`).
    paper_ratios: tier -> the published keep ratios.
    counterpart: for a removal preset, the rerouted preset at the same budget (or None).
    scorer: the registered scoring rule of its decisions; scorer_params: that rule's parameters.
    """

    name: str
    action: str
    reference_layers: tuple[int, ...]
    shape: str
    paper_ratios: dict[int, tuple[float, ...]] = field(default_factory=dict)
    counterpart: str | None = None
    reference_depth: int = REFERENCE_NUM_LAYERS
    scorer: str = "last_token"
    scorer_params: tuple[tuple[str, float], ...] = ()

    def build(self, tier: float, model: Any, depth: int, ratios: Ratios, num_visual: int) -> RoutingConfig:
        """The config at ``tier`` on a decoder of ``depth`` layers (``model``: what `preset` was given)."""
        layers = scale_decision_layers(self.reference_layers, depth, self.reference_depth)
        if ratios == "paper":
            if tier not in self.paper_ratios:
                published = ", ".join(str(t) for t in self.paper_ratios)
                raise ValueError(
                    f"ratios='paper' has no published set for tier {tier}: the paper publishes tiers {published}; "
                    "use ratios='solved' for other tiers"
                )
            keep = self.paper_ratios[tier]
        elif ratios == "solved":
            keep = solve(self.shape, layers, depth, target_avg_t=tier, num_visual=num_visual).keep_ratios
        else:
            raise ValueError(f"ratios must be 'solved' or 'paper', got {ratios!r}")
        return RoutingConfig(
            action=self.action, decision_layers=layers, keep_ratios=keep, scorer=self.scorer, scorer_params=self.scorer_params
        )

    def refusal(self, model: Any) -> str | None:
        """Why this preset cannot run on ``model`` (a model, config or layer count), or None."""
        return None


def register_preset(spec: PresetSpec) -> PresetSpec:
    """Add a preset to the registry (a name that is taken is refused)."""
    return PRESETS.register(spec)


def preset_names() -> tuple[str, ...]:
    """Every registered preset, in registration order."""
    return PRESETS.names()


def counterparts() -> dict[str, str]:
    """Removal preset -> its rerouted counterpart at the same budget, for every registered pair."""
    return {spec.name: spec.counterpart for spec in PRESETS if spec.counterpart is not None}


def preset(
    name: str,
    tier: float,
    model: Any = None,
    ratios: Ratios = "solved",
    num_layers: int | None = None,
    *,
    num_visual: int = REFERENCE_NUM_VISUAL,
) -> RoutingConfig:
    """A published schedule as a `RoutingConfig`, for any decoder depth (docs/semantics.md §4, §8).

    Args:
        name: a registered preset: "fastv", "pdrop", "reroute_vs_fastv", "reroute_vs_pdrop",
            "nuwa", "nuwa_reroute" (`preset_names()` lists them all).
        tier: the budget avg_T in visual tokens (192, 128, 64 are the paper's tiers for 576).
        model: a transformers VLM, its config, or the decoder's layer count. Without
            ``model`` and ``num_layers`` the paper's 32-layer LLaVA-1.5 decoder is assumed.
        ratios: ``"solved"`` (default) finds the preset's shape's ratios that hit ``tier``
            exactly (continuous counts) for this depth and ``num_visual``; ``"paper"`` returns
            the published ratios verbatim (tiers 192/128/64 only), which miss the tier on
            other depths and at PDrop-shaped tier 64 (docs/semantics.md §4).
        num_layers: the decoder's layer count, instead of (or agreeing with) ``model``.
        num_visual: the visual-token count the tier refers to (default 576).

    Decision layers are the published ones scaled from the reference depth to this depth
    (`reroute.budgets.depth.scale_decision_layers`).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: use one of {', '.join(PRESETS.names())}")
    depth = resolve_depth(model, num_layers)
    return PRESETS.get(name).build(tier, model, depth, ratios, num_visual)
