"""The `sparsevlm` scorer (docs/semantics.md §21): text raters score the visual tokens."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from reroute.methods.scorer import Scorer, register_scorer
from reroute.methods.sparsevlm.raters import select_raters
from reroute.methods.sparsevlm.recycle import merged_count, recycle
from reroute.methods.sparsevlm.scoring import rater_scores
from reroute.runtime.decision import ScoringInputs

#: SparseVLM+ (v2.0) keeps 14 of LLaVA-1.5-7B's 32 heads
PLUS_HEAD_FRACTION = 14 / 32


@register_scorer
class SparseVLMScorer(Scorer):
    """SparseVLM's rule: the mean attention the text raters pay each visual token.

    Scored with the layer *before* the decision (the official code scores with layer 2, 6, 15's
    attention and prunes that layer's output): ``attention_layer_offset = -1``. Parameters:
    ``head_fraction`` (share of heads kept, SparseVLM+: 14/32; 1.0: every head, v1.5) and
    ``gravity`` (1: divide by the rotary weights, SparseVLM+; 0: v1.5).
    """

    name = "sparsevlm"
    attention_layer_offset = -1
    params = {"head_fraction": PLUS_HEAD_FRACTION, "gravity": 1.0}

    def check_params(self, params: Mapping[str, float]) -> None:
        super().check_params(params)
        p = self.resolved(params)
        if not 0.0 < p["head_fraction"] <= 1.0:
            raise ValueError(f"sparsevlm's head_fraction must be in (0, 1], got {p['head_fraction']!r}")
        if p["gravity"] not in (0, 1):
            raise ValueError(f"sparsevlm's gravity must be 0 or 1, got {p['gravity']!r}")

    def rows_read(self, num_text: int) -> int:
        # the raters are some of the text tokens after the image: at most every text token
        return max(1, num_text)

    def prepare(self, embeddings: torch.Tensor, visual: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return select_raters(embeddings, visual, valid)

    def score(self, inputs: ScoringInputs) -> torch.Tensor:
        params = inputs.params
        return rater_scores(
            inputs.layer,
            inputs.hidden,
            inputs.cos,
            inputs.sin,
            inputs.key_valid,
            inputs.query_index,
            inputs.prepared & inputs.key_valid,
            inputs.visual,
            inputs.apply_rotary,
            head_fraction=params["head_fraction"],
            gravity=bool(params["gravity"]),
        )


#: SparseVLM v1.5's scoring rule: every head, no gravity correction
V15_PARAMS = {"head_fraction": 1.0, "gravity": 0.0}


@register_scorer
class SparseVLMV15Scorer(SparseVLMScorer):
    """SparseVLM v1.5 with its recycling (docs/semantics.md §21): the v1.5 rule (defaults
    ``head_fraction=1.0``, ``gravity=0``), and each removal decision merges part of what it prunes
    into new visual tokens after the kept ones, the positions renumbered (`recycle`)."""

    name = "sparsevlm_v15"
    params = dict(V15_PARAMS)
    recycles = True

    def merged_count(self, num_pruned: int) -> int:
        return merged_count(num_pruned)

    def recycle(self, states: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return recycle(states, scores).merged
