"""DART's selection for one sample (docs/semantics.md §20): pivots, then the tokens least duplicated with them.

Everything here is one sample's tokens in prompt order (``n`` of them); the scorer
(`reroute.methods.dart.scorer`) computes the inputs from the layer before the decision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def top_indices(values: torch.Tensor, pool: torch.Tensor, count: int) -> list[int]:
    """The ``count`` highest ``values`` among the ``pool`` positions, highest first; ties to the lower position."""
    masked = values.float().masked_fill(~pool, float("-inf"))
    order = torch.sort(masked, descending=True, stable=True).indices
    return order[: min(count, int(pool.sum()))].tolist()


def shares(total: int, parts: int) -> list[int]:
    """``total`` split over ``parts`` pivots: equal shares, the first ``total % parts`` one more."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def dart_select(
    key_l1: torch.Tensor,
    states: torch.Tensor,
    candidates: torch.Tensor,
    text_pool: torch.Tensor,
    keep: int,
    image_pivots: int,
    text_pivots: int,
) -> torch.Tensor:
    """``(n,)`` bool: the ``keep`` candidates DART retains.

    Args:
        key_l1: ``(n,)`` L1 norm of each token's key at the layer before the decision (all heads).
        states: ``(n, D)`` the states entering the decision layer after the decoder's final norm.
        candidates: ``(n,)`` bool, the visual tokens that compete.
        text_pool: ``(n,)`` bool, the text tokens the text pivots are taken from.
        keep: how many candidates to retain.
        image_pivots, text_pivots: how many pivots of each kind (DART's LLaVA setting: 4 and 4).

    The image pivots are the candidates with the largest key norm and are retained; the text
    pivots (largest key norm in ``text_pool``) are not. Pivots are processed in ascending
    position; each takes its share of the rest of the budget: the candidates (not pivots, not
    taken yet) whose states have the lowest cosine similarity with the pivot's.
    """
    selected = torch.zeros_like(candidates)
    image = top_indices(key_l1, candidates, min(image_pivots, keep))
    text = top_indices(key_l1, text_pool, text_pivots)
    selected[image] = True
    pivots = sorted(image + text)
    rest = keep - len(image)
    if rest <= 0 or not pivots:
        return selected
    for pivot, take in zip(pivots, shares(rest, len(pivots))):
        valid = torch.nonzero(candidates & ~selected).flatten()
        if take == 0 or len(valid) == 0:
            continue
        similarity = F.cosine_similarity(states[pivot], states[valid], dim=-1)
        order = torch.sort(-similarity, descending=True, stable=True).indices  # least similar first
        selected[valid[order[:take]]] = True
    return selected
