"""Presets of a pre-LLM vision stage (docs/semantics.md §22): the stage alone, and the stage then reroute decisions.

A stage that publishes one number per tier (the tokens it lets into the decoder: VisionZip and
DivPrune keep 192 / 128 / 64 of LLaVA-1.5's 576) gives two presets at the same budget:

- ``<stage>`` (removal, as published): the stage keeps ``K = tier`` tokens of ``num_visual``
  (``keep_fraction = tier / num_visual``) and the decoder runs them all. A `RoutingConfig` needs
  one decision, so it holds one that keeps every token (keep ratio 1.0 at the last layer: no
  scoring, no compaction, nothing changes); avg_T = ``K``.
- ``<stage>_reroute`` (ours): Nüwa + reroute's split of the budget (`reroute.methods.nuwa.presets`):
  the stage keeps ``K'`` tokens, then ``reroute`` decisions at layers 16 and 24 of 32 (scaled to
  the depth ``D``) each keep ``k = K' / 7`` of them by docs/semantics.md §2's rule (``last_token``),
  with ``K'`` solved so that the continuous avg_T ``(d K' + (D - d) K' / 7) / D`` equals the tier
  (``d`` the scaled first decision layer): ``K' = 112`` for tier 64 on 32 layers.

Both presets give the same config for ``ratios="paper"`` and ``"solved"``: the removal preset is
the published count at every tier, and the rerouted one is our design, with no published ratios.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reroute.budgets.depth import scale_decision_layers
from reroute.config import RoutingConfig

#: decision layers of the rerouted counterpart on a 32-layer decoder (Nüwa + reroute's), and k / K'
REROUTE_LAYERS, REFERENCE_DEPTH, REROUTE_FRACTION = (16, 24), 32, 1 / 7


@dataclass(frozen=True)
class StagePreset:
    """``<stage>`` (``action="remove"``: the stage alone) or ``<stage>_reroute`` (the stage, then reroute decisions).

    name: the preset's name; stage: the registered vision stage; action: ``"remove"`` or ``"reroute"``;
    counterpart: the rerouted preset of a removal preset; supported: ``model -> None`` or why the stage
    cannot run on ``model`` (a model, a config, or a layer count / None: the paper's LLaVA-1.5).
    """

    name: str
    stage: str
    action: str
    supported: Callable[[Any], str | None]
    counterpart: str | None = None

    def build(self, tier: float, model: Any, depth: int, ratios: str, num_visual: int) -> RoutingConfig:
        """The config at ``tier`` on a decoder of ``depth`` layers (see `reroute.budgets.presets.PresetSpec.build`)."""
        if ratios not in ("solved", "paper"):
            raise ValueError(f"ratios must be 'solved' or 'paper', got {ratios!r}")
        if (reason := self.refusal(model)) is not None:
            raise ValueError(reason)
        if self.action == "remove":
            layers, keep, kept = (depth - 1,), (1.0,), tier
        else:
            layers = scale_decision_layers(REROUTE_LAYERS, depth, REFERENCE_DEPTH)
            keep = (REROUTE_FRACTION,) * len(layers)
            kept = tier * depth / (layers[0] + (depth - layers[0]) * REROUTE_FRACTION)
        fraction = kept / num_visual
        if not 0.0 < fraction <= 1.0:
            raise ValueError(
                f"{self.name} cannot reach tier {tier:g} of {num_visual} visual tokens: the {self.stage} stage would keep "
                f"{kept:.1f}; use a tier of at most {num_visual * tier / kept:.1f}"
            )
        return RoutingConfig(
            action=self.action,
            decision_layers=layers,
            keep_ratios=keep,
            vision_stage=self.stage,
            vision_params={"keep_fraction": fraction},
        )

    def refusal(self, model: Any) -> str | None:
        """Why the stage cannot run on ``model``, or None."""
        if model is None or isinstance(model, int):
            return None
        return self.supported(model)
