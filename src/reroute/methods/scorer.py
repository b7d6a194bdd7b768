"""Scoring rules: which visual tokens matter at a decision (docs/semantics.md §2; Nüwa's stage-2 rule).

A scorer turns the hidden states that enter its attention layer into one score per token,
from a few query rows (never the full L x L map). The engine selects the top-k candidates
by score; ties go to the lower position. A new rule is one subclass registered with
`register_scorer`; then ``RoutingConfig(scorer=<its name>)`` uses it and the engine is
unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from reroute.methods.attention import last_token_attention
from reroute.registry import SCORERS
from reroute.runtime.decision import ScoringInputs


class Scorer:
    """A scoring rule. Subclasses set ``name`` and implement ``score``.

    ``attention_layer_offset``: which layer's attention scores the decision at layer ``d``:
    0 for layer ``d`` itself on its input (docs/semantics.md §2), -1 for layer ``d - 1`` on *its* input
    (Nüwa: the tokens are removed from layer ``d`` on, after layer ``d - 1`` ran on them all).
    """

    name: str = ""
    attention_layer_offset: int = 0
    #: query rows the rule reads (for `reroute.budgets.cost`'s scoring FLOPs)
    query_rows: int = 1
    #: True when the rule projects every key token's key (for `reroute.budgets.cost`'s scoring FLOPs)
    projects_keys: bool = True
    #: True when the rule compares the states entering its layer with those entering the layer
    #: before (``ScoringInputs.previous_hidden``); the engine keeps that copy only then
    reads_previous_layer: bool = False
    #: True when a ``remove`` decision turns part of what it prunes into new visual tokens placed after
    #: the kept ones, and each layer's positions are renumbered (SparseVLM v1.5's recycling,
    #: docs/semantics.md §21); the engine then asks `merged_count` and `recycle`
    recycles: bool = False
    #: accepted parameters (``RoutingConfig.scorer_params``) and their defaults
    params: Mapping[str, float] = {}

    def check_params(self, params: Mapping[str, float]) -> None:
        """Raise a one-line ValueError for an unknown or out-of-range parameter."""
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            accepted = ", ".join(sorted(self.params)) or "none"
            raise ValueError(f"scorer {self.name!r} has no parameter {unknown[0]!r}: it accepts {accepted}")
        for key, value in params.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"scorer parameter {key!r} must be a number, got {value!r}")

    def rows_read(self, num_text: int) -> int:
        """Query rows one decision reads on a prompt with ``num_text`` other tokens (cost accounting);
        ``query_rows`` unless the count depends on the prompt (SparseVLM: at most every text token)."""
        return self.query_rows

    def resolved(self, params: Mapping[str, float]) -> dict[str, float]:
        """``params`` with the defaults filled in."""
        return {**self.params, **params}

    def prepare(self, embeddings: torch.Tensor, visual: torch.Tensor, valid: torch.Tensor) -> torch.Tensor | None:
        """Per-token values derived once per prefill from the decoder's input, or None (the default).

        ``embeddings``: ``(B, L, D)`` the states entering layer 0 (rows a vision stage removed may
        hold anything); ``visual``, ``valid``: ``(B, L)`` bool, the visual tokens and the tokens that
        are neither padding nor removed. A ``(B, L)`` result reaches every decision as
        ``ScoringInputs.prepared``, gathered to the scored tokens (docs/semantics.md §19).
        """
        return None

    def score(self, inputs: ScoringInputs) -> torch.Tensor:
        """``(B, n)`` float scores, higher = more important (values on non-keys are ignored)."""
        raise NotImplementedError

    def merged_count(self, num_pruned: int) -> int:
        """Tokens a decision that prunes ``num_pruned`` visual tokens adds (0 unless the scorer ``recycles``)."""
        return 0

    def recycle(self, states: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``(merged_count(P), D)`` float32: the tokens one sample's pruned tokens become (``states``
        ``(P, D)`` in sequence order, ``scores`` ``(P,)`` their scores); only for a scorer that ``recycles``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"




#: class decorator: registers one instance under ``cls.name`` (duplicates refused)
register_scorer = SCORERS.register_class
get_scorer = SCORERS.get


@register_scorer
class LastTokenScorer(Scorer):
    """docs/semantics.md §2 (FastV, PDrop, Reroute): head-mean attention of the last prompt token, at the decision layer."""

    name = "last_token"

    def score(self, inputs: ScoringInputs) -> torch.Tensor:
        return last_token_attention(
            inputs.layer, inputs.hidden, inputs.cos, inputs.sin, inputs.key_valid, inputs.query_index, inputs.apply_rotary
        )
