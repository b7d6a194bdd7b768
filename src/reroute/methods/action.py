"""Actions: what a decision does to the visual tokens it does not select (docs/semantics.md §3).

An action says which tokens compete at a decision, which tokens are keys of the scoring
row, which run the next stage, whether its keep ratios must shrink, how its stages may be
executed, and how many tokens a decision scores (for `reroute.budgets.cost`). All masks are
``(B, L)`` bool over the prompt's positions.
"""

from __future__ import annotations

import torch

from reroute.registry import ACTIONS

STAGEWISE, PER_LAYER = "stagewise", "per_layer"


class Action:
    """Base action. Subclasses set the attributes and override the three mask rules.

    revisits: True when a deferred token competes again at the next decision (it bypassed
        the stage on the residual path and its state is still in the full-length buffer);
        False when unselected tokens are gone for good.
    monotone: True when keep ratios may not grow from one decision to the next.
    executions: the ways a stage may run (``"stagewise"``, ``"per_layer"``); the first is the default.
    """

    name: str = ""
    revisits: bool = False
    monotone: bool = False
    executions: tuple[str, ...] = (STAGEWISE,)

    def candidates(self, visual: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Tokens that may be selected, given the tokens ``active`` in the stage before."""
        raise NotImplementedError

    def keys(self, visual: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Tokens the scoring row attends to (besides padding, which is never a key)."""
        raise NotImplementedError

    def next_active(self, visual: torch.Tensor, active: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """Tokens that run the stage after the decision (text always runs)."""
        raise NotImplementedError

    def num_candidates(self, num_visual: int, kept_before: int | None) -> int:
        """Candidates of a decision for a prompt of ``num_visual`` visual tokens, ``kept_before``
        kept by the previous decision (None at the first decision)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"




#: class decorator: registers one instance under ``cls.name`` (duplicates refused)
register_action = ACTIONS.register_class
get_action = ACTIONS.get


@register_action
class Remove(Action):
    """Rank-and-remove (FastV, PDrop, Nüwa's stage 2): only survivors compete; the rest never return."""

    name = "remove"
    revisits = False
    monotone = True
    executions = (STAGEWISE,)

    def candidates(self, visual, active):
        return visual & active

    def keys(self, visual, active):
        return active

    def next_active(self, visual, active, chosen):
        return active & (~visual | chosen)

    def num_candidates(self, num_visual, kept_before):
        return num_visual if kept_before is None else kept_before


@register_action
class Reroute(Action):
    """Recoverable routing (the Reroute paper): every visual token competes at every decision;
    a deferred token bypasses the stage on the residual path."""

    name = "reroute"
    revisits = True
    monotone = False
    executions = (STAGEWISE, PER_LAYER)

    def candidates(self, visual, active):
        return visual

    def keys(self, visual, active):
        return torch.ones_like(active)

    def next_active(self, visual, active, chosen):
        return ~visual | chosen

    def num_candidates(self, num_visual, kept_before):
        return num_visual
