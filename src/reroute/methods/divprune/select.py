"""DivPrune's selection (docs/semantics.md §22): max-min diversity over one image's projected tokens.

The tokens are points under the cosine distance ``d_ij = 1 - cos(x_i, x_j)``. The first pick is the
token farthest from its nearest neighbour; every later pick is the token whose distance to the
nearest token already picked is largest (a greedy max-min diversity subset). Ties go to the lower
index. Everything runs in float32 on the matrix ``D`` read by columns (``D`` is symmetric up to
rounding; columns are what the official code reads, so the picks are the same to the bit).
"""

from __future__ import annotations

import torch


def cosine_distances(tokens: torch.Tensor) -> torch.Tensor:
    """``(N, N)`` float32 ``1 - cos(x_i, x_j)`` of the rows of ``tokens`` ``(N, C)``."""
    x = tokens.float()
    unit = x / x.norm(dim=1, keepdim=True)
    return 1.0 - unit @ unit.t()


def divprune_select(tokens: torch.Tensor, count: int) -> torch.Tensor:
    """``(count,)`` long: the indices DivPrune picks among the rows of ``tokens`` ``(N, C)``, in pick order.

    ``count`` is at most ``N``. The first score of token ``j`` is the second smallest entry of
    column ``j`` of the distance matrix (the smallest is its distance to itself, ~0); after a pick
    ``s``, the score of ``j`` becomes ``min(score_j, D[s, j])`` (the minimum over the picks so far),
    and a picked token is never picked again.
    """
    num_tokens = tokens.shape[0]
    if not 1 <= count <= num_tokens:
        raise ValueError(f"DivPrune keeps 1..{num_tokens} of {num_tokens} tokens, got {count}")
    distances = cosine_distances(tokens)
    picks = torch.empty(count, dtype=torch.long, device=tokens.device)
    if num_tokens == 1:
        picks[0] = 0
        return picks
    nearest = torch.topk(distances, 2, dim=0, largest=False).values[1]
    picks[0] = torch.argmax(nearest)  # argmax returns the first of equal maxima: ties to the lower index
    score = distances[picks[0]].clone()
    for i in range(1, count):
        # a pick never returns: the official code could pick a token again once only duplicates of picks remain
        score[picks[i - 1]] = float("-inf")
        picks[i] = torch.argmax(score)
        score = torch.minimum(score, distances[picks[i]])
    return picks
