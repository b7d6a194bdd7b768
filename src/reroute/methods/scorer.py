"""Scoring rules: which visual tokens matter at a decision (SPEC §2; Nüwa's stage-2 rule).

A scorer turns the hidden states that enter its attention layer into one score per token,
from a few query rows (never the full L x L map). The engine selects the top-k candidates
by score; ties go to the lower position. A new rule is one subclass registered with
`register_scorer`; then ``RoutingConfig(scorer=<its name>)`` uses it and the engine is
unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reroute.backbones.base import RotaryFn
from reroute.methods.registry import Registry
from reroute.scoring import last_token_attention


@dataclass(frozen=True)
class ScoringInputs:
    """What a scorer may read at one decision, for a batch (``n`` tokens per sample).

    layer: the decoder layer whose attention scores (its input norm and q/k projections).
    hidden: ``(B, n, D)`` the states entering that layer, for every key token, in original order.
    cos, sin: ``(B, n, head_dim)`` rotary tables at the tokens' original positions.
    key_valid: ``(B, n)`` bool, the tokens that are keys (not padding, slack, or removed).
    query_index: ``(B,)`` index into ``n`` of each sample's last prompt token.
    apply_rotary: the family's ``apply_rotary_pos_emb(q, k, cos, sin)``.
    """

    layer: nn.Module
    hidden: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    key_valid: torch.Tensor
    query_index: torch.Tensor
    apply_rotary: RotaryFn


class Scorer:
    """A scoring rule. Subclasses set ``name`` and implement ``score``.

    ``attention_layer_offset``: which layer's attention scores the decision at layer ``d``:
    0 for layer ``d`` itself on its input (SPEC §2), -1 for layer ``d - 1`` on *its* input
    (Nüwa: the tokens are removed from layer ``d`` on, after layer ``d - 1`` ran on them all).
    """

    name: str = ""
    attention_layer_offset: int = 0
    #: query rows the rule reads (for `reroute.cost`'s scoring FLOPs)
    query_rows: int = 1

    def score(self, inputs: ScoringInputs) -> torch.Tensor:
        """``(B, n)`` float scores, higher = more important (values on non-keys are ignored)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


SCORERS: Registry[Scorer] = Registry("scorer", "scorer")


#: class decorator: registers one instance under ``cls.name`` (duplicates refused)
register_scorer = SCORERS.register_class
get_scorer = SCORERS.get


@register_scorer
class LastTokenScorer(Scorer):
    """SPEC §2 (FastV, PDrop, Reroute): head-mean attention of the last prompt token, at the decision layer."""

    name = "last_token"

    def score(self, inputs: ScoringInputs) -> torch.Tensor:
        return last_token_attention(
            inputs.layer, inputs.hidden, inputs.cos, inputs.sin, inputs.key_valid, inputs.query_index, inputs.apply_rotary
        )
