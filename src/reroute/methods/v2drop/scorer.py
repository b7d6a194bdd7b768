"""The V2Drop scorer (docs/semantics.md §20): how far a token's state moved across the layer before the decision."""

from __future__ import annotations

import torch

from reroute.methods.scorer import Scorer, ScoringInputs, register_scorer


def variation(hidden: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """``(B, n)`` float32: the L2 norm of each token's change between two layers' inputs."""
    return torch.norm(hidden.float() - previous.float(), p=2, dim=-1)


@register_scorer
class V2DropScorer(Scorer):
    """The variation over the last layer that ran the token: the layer before the decision for a
    token that took part in it (V2Drop's rule), otherwise the score it had at the previous decision
    (a token ``reroute`` deferred did not change in the layers it skipped)."""

    name = "v2drop"
    query_rows = 0
    projects_keys = False
    reads_previous_layer = True

    def score(self, inputs: ScoringInputs) -> torch.Tensor:
        scores = variation(inputs.hidden, inputs.previous_hidden)
        if inputs.previous_scores is None:  # the first decision, or the previous one kept every candidate
            return scores
        return torch.where(inputs.ran_previous, scores, inputs.previous_scores.float())
