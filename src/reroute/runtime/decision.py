"""What one decision works with: the scorer's inputs and the top-k selection (docs/semantics.md §2)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from reroute.runtime.adapter import RotaryFn


class RoutingPlan(Protocol):
    """What the engine reads of a method (`reroute.RoutingConfig` is the one implementation):
    the parts by their registered names and the schedule."""

    action: str
    scorer: str
    execution: str
    decision_layers: tuple[int, ...]

    @property
    def num_decisions(self) -> int: ...

    @property
    def scorer_parameters(self) -> dict[str, float]: ...

    def keep_counts(self, num_visual: int) -> tuple[int, ...]: ...

    def stage_of_layer(self, layer: int) -> int: ...


@dataclass(frozen=True)
class ScoringInputs:
    """What a scorer may read at one decision, for a batch (``n`` tokens per sample).

    layer: the decoder layer whose attention scores (its input norm and q/k projections).
    hidden: ``(B, n, D)`` the states entering that layer, for every key token, in original order.
    cos, sin: ``(B, n, head_dim)`` rotary tables at the tokens' original positions.
    key_valid: ``(B, n)`` bool, the tokens that are keys (not padding, slack, or removed).
    query_index: ``(B,)`` index into ``n`` of each sample's last prompt token.
    apply_rotary: the family's ``apply_rotary_pos_emb(q, k, cos, sin)``.

    The fields below let rules that are not one attention row decide (docs/semantics.md §19):
    visual: ``(B, n)`` bool, the visual tokens among the ``n`` (text is ``key_valid & ~visual``).
    candidates: ``(B, n)`` bool, the tokens this decision selects from (the action's candidates).
    keep: ``(B,)`` long, how many candidates the decision keeps per sample.
    decision: the index of the decision (0 for the first).
    params: the scorer's parameters, defaults filled in (``RoutingConfig.scorer_params``).
    previous_hidden: ``(B, n, D)`` the states that entered the layer *before* ``layer``, for the
        same tokens, when the scorer asks for them (``Scorer.reads_previous_layer``); else None.
    sample_length: ``(B,)`` long, each sample's prompt tokens that are not padding (a per-sample
        quantity that does not depend on the batch the sample is in).
    prepared: ``(B, n)`` what the scorer's ``prepare`` derived once per prefill from the decoder's
        input for every prompt token (SparseVLM: its text raters), for the same tokens; else None.
    previous_layer: the decoder layer before ``layer`` when ``previous_hidden`` is given (DART reads
        its keys); ran_previous: ``(B, n)`` bool, the tokens that took part in that layer.
    previous_scores: ``(B, n)`` what this scorer returned at the previous decision, for the same
        tokens (-inf where it did not score them); None at the first decision or when that decision
        kept every candidate unscored.
    final_norm: the decoder's final norm (DART compares states after it).
    """

    layer: nn.Module
    hidden: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    key_valid: torch.Tensor
    query_index: torch.Tensor
    apply_rotary: RotaryFn
    visual: torch.Tensor | None = None
    candidates: torch.Tensor | None = None
    keep: torch.Tensor | None = None
    decision: int = 0
    params: Mapping[str, float] = field(default_factory=dict)
    previous_hidden: torch.Tensor | None = None
    sample_length: torch.Tensor | None = None
    prepared: torch.Tensor | None = None
    previous_layer: nn.Module | None = None
    ran_previous: torch.Tensor | None = None
    previous_scores: torch.Tensor | None = None
    final_norm: nn.Module | None = None


def select_top_k(scores: torch.Tensor, candidates: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per sample, the ``keep[b]`` highest-scoring candidates; ties go to the lower index.

    Args:
        scores: ``(B, n)`` float scores.
        candidates: ``(B, n)`` bool, which tokens may be selected.
        keep: ``(B,)`` long, how many to select (at most the candidates of that sample).

    Returns:
        ``(B, n)`` bool mask of the selected tokens.
    """
    masked = scores.masked_fill(~candidates, float("-inf"))
    # A stable descending sort keeps equal scores in index order: ties break toward the lower position.
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices
    rank = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    return torch.zeros_like(candidates).scatter(1, order, rank < keep[:, None])
