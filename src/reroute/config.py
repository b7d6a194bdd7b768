"""`RoutingConfig`: what a routed forward does, validated once at construction (SPEC §1, §3, §8)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Action = Literal["remove", "reroute"]
Execution = Literal["stagewise", "per_layer"]

ACTIONS: tuple[str, ...] = ("remove", "reroute")
EXECUTIONS: tuple[str, ...] = ("stagewise", "per_layer")

# floor(N * r) must not lose a token to binary rounding (0.29 * 100 = 28.999...).
_FLOOR_EPS = 1e-9


def keep_count(num_visual: int, keep_ratio: float) -> int:
    """SPEC §1: ``k = max(1, floor(N_vis * r))`` (0 when there is no visual token)."""
    if num_visual <= 0:
        return 0
    return max(1, math.floor(num_visual * keep_ratio + _FLOOR_EPS))


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
    """A schedule (decision layers, keep ratios) and an action.

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
    """

    action: Action = "reroute"
    decision_layers: tuple[int, ...] = (3,)
    keep_ratios: tuple[float, ...] = (0.5,)
    execution: Execution = "stagewise"

    def __post_init__(self) -> None:
        # Accept lists (JSON), numpy scalars and a single number, but store tuples of int / float so the
        # config stays hashable and prints plainly (see _as_layers / _as_ratios).
        object.__setattr__(self, "decision_layers", _as_layers(self.decision_layers))
        object.__setattr__(self, "keep_ratios", _as_ratios(self.keep_ratios, len(self.decision_layers)))
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {self.action!r}")
        if self.execution not in EXECUTIONS:
            raise ValueError(f"execution must be one of {EXECUTIONS}, got {self.execution!r}")
        if self.action == "remove" and self.execution != "stagewise":
            raise ValueError(
                "execution='per_layer' applies to action='reroute' only; use execution='stagewise' with 'remove'"
            )
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
        if self.action == "remove":
            for s in range(1, len(ratios)):
                if ratios[s] > ratios[s - 1]:
                    raise ValueError(
                        f"keep_ratios grow from {ratios[s - 1]} to {ratios[s]} at decision layer {layers[s]}: "
                        "removed tokens cannot come back; make the ratios non-increasing or use action='reroute'"
                    )

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

    def visual_counts_per_layer(self, num_visual: int, num_layers: int) -> list[int]:
        """Visual tokens taking part in each decoder layer (the same for both actions, SPEC §1)."""
        counts = self.keep_counts(num_visual)
        return [num_visual if (s := self.stage_of_layer(i)) < 0 else counts[s] for i in range(num_layers)]
