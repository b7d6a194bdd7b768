"""`RoutingConfig`: what a routed forward does, validated once at construction (docs/semantics.md §1, §3, §8)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from reroute.registry import ACTIONS as ACTION_REGISTRY
from reroute.registry import SCORERS, VISION_STAGES

# floor(N * r) must not lose a token to binary rounding (0.29 * 100 = 28.999...).
_FLOOR_EPS = 1e-9


def keep_count(num_visual: int, keep_ratio: float) -> int:
    """docs/semantics.md §1: ``k = max(1, floor(N_vis * r))`` (0 when there is no visual token)."""
    if num_visual <= 0:
        return 0
    return max(1, math.floor(num_visual * keep_ratio + _FLOOR_EPS))


def _registered_executions() -> tuple[str, ...]:
    """Every way some registered action can run a stage, in registration order."""
    return tuple(dict.fromkeys(e for action in ACTION_REGISTRY for e in action.executions))


# numbers' ABCs cover numpy's integers and floats (numpy.bool_ is neither); Python's bool is an int.
def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_layers(value) -> tuple[int, ...]:
    """One int or a sequence of ints (Python or numpy) -> tuple of int; bools, floats and strings are refused."""
    if _is_integer(value):
        return (int(value),)
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"decision_layers must be integers, got {value!r}")
    layers = tuple(value)
    if any(not _is_integer(d) for d in layers):
        raise ValueError(f"decision_layers must be integers, got {layers}")
    return tuple(int(d) for d in layers)


def _as_ratios(value, num_layers: int) -> tuple[float, ...]:
    """One number (the same ratio at every decision) or a sequence of numbers -> tuple of float."""
    if _is_real(value):
        return (float(value),) * max(1, num_layers)
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"keep_ratios must be numbers, got {value!r}")
    ratios = tuple(value)
    if any(not _is_real(r) for r in ratios):
        raise ValueError(f"keep_ratios must be numbers, got {ratios}")
    return tuple(float(r) for r in ratios)


@dataclass(frozen=True)
class RoutingConfig:
    """A method: a scoring rule, a schedule (decision layers, keep ratios) and an action,
    plus an optional vision-side stage. Parts are chosen by name from the registries in
    `reroute.methods` and checked here, so a config that exists can run.

    Attributes:
        action: ``"remove"`` deletes unselected visual tokens for good (FastV, PDrop);
            ``"reroute"`` lets them skip the stage on the residual path and compete again
            at the next decision (the Reroute paper).
        decision_layers: 0-based decoder layers ``d_1 < ... < d_S`` at whose input a
            decision is taken. Stage ``s`` is ``[d_s, d_{s+1})``. Must be >= 1: the first
            layer always sees every token.
        keep_ratios: one ratio ``r_s`` in (0, 1] per decision; ``k_s = max(1, floor(N_vis r_s))``
            with ``N_vis`` the visual tokens of each sample's prompt. A single number is the
            same ratio at every decision layer (a single int is one decision layer).
        execution: how ``reroute`` runs a stage: ``"stagewise"`` keeps the compact sequence
            through the whole stage, ``"per_layer"`` gathers and scatters at every layer.
            Same numbers; stage-wise moves fewer bytes. ``remove`` always runs stage-wise.
        scorer: the scoring rule of every decision (``"last_token"``: docs/semantics.md §2).
        vision_stage: a stage that reduces the visual tokens before the decoder (``None``: none;
            ``"nuwa"``: Nüwa's stage 1). With a stage, ``N_vis`` above is the number of
            visual tokens the stage kept.
        vision_params: the vision stage's parameters (a mapping of numbers; stored sorted).
        scorer_params: the scorer's parameters (a mapping of numbers, e.g. ``{"seed": 0}`` for
            ``scorer="random"``; stored sorted). Each scorer lists the names it accepts.
    """

    action: str = "reroute"
    decision_layers: tuple[int, ...] = (3,)
    keep_ratios: tuple[float, ...] = (0.5,)
    execution: str = "stagewise"
    scorer: str = "last_token"
    vision_stage: str | None = None
    vision_params: tuple[tuple[str, float], ...] = ()
    scorer_params: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        # Accept lists (JSON), numpy scalars and a single number, but store tuples of int / float so the
        # config stays hashable and prints plainly (see _as_layers / _as_ratios).
        object.__setattr__(self, "decision_layers", _as_layers(self.decision_layers))
        object.__setattr__(self, "keep_ratios", _as_ratios(self.keep_ratios, len(self.decision_layers)))
        params = self.vision_params
        items = params.items() if isinstance(params, Mapping) else params
        object.__setattr__(self, "vision_params", tuple(sorted((str(k), v) for k, v in items)))
        params = self.scorer_params
        items = params.items() if isinstance(params, Mapping) else params
        object.__setattr__(self, "scorer_params", tuple(sorted((str(k), v) for k, v in items)))
        if self.action not in ACTION_REGISTRY:
            raise ValueError(f"action must be one of {ACTION_REGISTRY.names()}, got {self.action!r}")
        action = ACTION_REGISTRY.get(self.action)
        executions = _registered_executions()
        if self.execution not in executions:
            raise ValueError(f"execution must be one of {executions}, got {self.execution!r}")
        if self.execution not in action.executions:
            able = [a.name for a in ACTION_REGISTRY if self.execution in a.executions]
            which = f"action={able[0]!r}" if len(able) == 1 else f"action in {tuple(able)}"
            raise ValueError(
                f"execution={self.execution!r} applies to {which} only; "
                f"use execution={action.executions[0]!r} with {self.action!r}"
            )
        scorer = SCORERS.get(self.scorer)
        scorer.check_params(dict(self.scorer_params))  # unknown names: one line listing them
        if scorer.recycles and (self.action != "remove" or self.vision_stage is not None):
            raise ValueError(
                f"scorer {self.scorer!r} recycles pruned tokens (docs/semantics.md §21): it runs with action='remove' "
                "and no vision_stage only; use scorer='sparsevlm' for the other actions"
            )
        if self.vision_stage is not None:
            VISION_STAGES.get(self.vision_stage).check_params(dict(self.vision_params))
        elif self.vision_params:
            raise ValueError("vision_params are given but vision_stage is None: name the stage, e.g. vision_stage='nuwa'")
        layers, ratios = self.decision_layers, self.keep_ratios
        if not layers:
            raise ValueError("decision_layers is empty: give at least one decision layer, e.g. (3,)")
        if any(b <= a for a, b in zip(layers, layers[1:])):
            raise ValueError(f"decision_layers must be strictly increasing, got {layers}")
        if layers[0] < 1:
            raise ValueError(
                f"decision layer {layers[0]} is not allowed: layer 0 always sees every token; use decision layers >= 1"
            )
        if len(ratios) != len(layers):
            raise ValueError(
                f"keep_ratios has {len(ratios)} values but decision_layers has {len(layers)}: give one ratio per decision layer"
            )
        for r in ratios:
            if not (0.0 < r <= 1.0) or math.isnan(r):
                raise ValueError(f"keep ratio {r} is outside (0, 1]: each keep ratio must be > 0 and <= 1")
        if action.monotone:
            revisiting = next((a.name for a in ACTION_REGISTRY if a.revisits), None)
            for s in range(1, len(ratios)):
                if ratios[s] > ratios[s - 1]:
                    raise ValueError(
                        f"keep_ratios grow from {ratios[s - 1]} to {ratios[s]} at decision layer {layers[s]}: "
                        f"removed tokens cannot come back; make the ratios non-increasing or use action={revisiting!r}"
                    )

    # ------------------------------------------------------------------ plain data
    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-safe plain data; ``RoutingConfig.from_dict(c.to_dict()) == c``."""
        return {
            "action": self.action,
            "decision_layers": list(self.decision_layers),
            "keep_ratios": list(self.keep_ratios),
            "execution": self.execution,
            "scorer": self.scorer,
            "vision_stage": self.vision_stage,
            "vision_params": dict(self.vision_params),
            "scorer_params": dict(self.scorer_params),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoutingConfig:
        """A config from `to_dict`'s plain data (e.g. read back from JSON); missing keys take their defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"RoutingConfig has no field {unknown[0]!r}: use {', '.join(sorted(known))}")
        return cls(**data)

    @property
    def vision_parameters(self) -> dict[str, float]:
        """The vision stage's parameters, defaults filled in (empty without a stage)."""
        if self.vision_stage is None:
            return {}
        return VISION_STAGES.get(self.vision_stage).resolved(dict(self.vision_params))

    @property
    def scorer_parameters(self) -> dict[str, float]:
        """The scorer's parameters, defaults filled in."""
        return SCORERS.get(self.scorer).resolved(dict(self.scorer_params))

    @property
    def num_decisions(self) -> int:
        return len(self.decision_layers)

    def keep_counts(self, num_visual: int) -> tuple[int, ...]:
        """Keep count ``k_s`` at every decision for a prompt with ``num_visual`` visual tokens."""
        return tuple(keep_count(num_visual, r) for r in self.keep_ratios)

    def stage_of_layer(self, layer: int) -> int:
        """Index of the stage a layer belongs to; -1 for the layers before the first decision."""
        stage = -1
        for s, d in enumerate(self.decision_layers):
            if layer >= d:
                stage = s
        return stage

    def decoder_visual_count(self, num_visual: int) -> int:
        """Visual tokens that enter the decoder for an image of ``num_visual`` tokens (the vision
        stage's ``K``; ``num_visual`` without a stage). Keep ratios are fractions of this count."""
        if self.vision_stage is None:
            return num_visual
        return VISION_STAGES.get(self.vision_stage).kept_count(num_visual, dict(self.vision_params))

    def stage_visual_counts(self, num_visual: int) -> tuple[int, ...]:
        """Visual tokens taking part in each stage for a prompt of ``num_visual`` visual tokens: ``k_s``,
        plus the merged tokens a recycling scorer adds (docs/semantics.md §21), which compete again later."""
        counts = self.keep_counts(num_visual)
        scorer = SCORERS.get(self.scorer)
        if not scorer.recycles or num_visual <= 0:
            return counts
        stages, before = [], num_visual
        for k in counts:
            before = k + scorer.merged_count(max(0, before - k))
            stages.append(before)
        return tuple(stages)

    def visual_counts_per_layer(self, num_visual: int, num_layers: int) -> list[int]:
        """Visual tokens taking part in each decoder layer (the same for both actions, docs/semantics.md §1),
        for a prompt of one image of ``num_visual`` tokens."""
        entering = self.decoder_visual_count(num_visual)
        counts = self.stage_visual_counts(entering)
        return [entering if (s := self.stage_of_layer(i)) < 0 else counts[s] for i in range(num_layers)]
