"""SparseVLM v1.5's recycling of pruned visual tokens (docs/semantics.md §21), per sample, float32.

At each of its pruning layers SparseVLM v1.5 (Gumpest/SparseVLMs branch ``v1.5`` = b9619e6,
``modelling_sparse_llama.py`` lines 271-300, ``utils.py`` ``cluster_and_merge``) does not throw
all the pruned visual tokens away:

1. **Which are recycled**: of the ``P`` pruned visual tokens, the ``int(P * 0.3) + 1`` with the
   highest scores (the same rater scores that chose the kept ones).
2. **How they merge**: density-peak clustering of those ``M`` states into ``int(M / 10) + 1``
   clusters. The distance of two tokens is their Euclidean distance over ``sqrt(D)``; a token's
   density is ``exp(-mean of its squared distances to its k nearest tokens)`` (itself included,
   ``k`` the cluster count); its "parent distance" is the distance to its nearest denser token
   (the largest distance of the whole matrix for the densest); the ``k`` tokens with the largest
   ``parent distance x density`` are the centers, every other token joins its nearest center, and
   each cluster becomes one token: ``sum of its states / (its size + 1e-6)``.

The merged tokens are new visual tokens, inserted after the kept visual tokens (the engine's
business, not this module's).

Deterministic where the official code is not (docs/semantics.md §21):
- the recycled tokens are ordered by descending score, equal scores by position (``torch.topk``'s
  order of ties is unspecified);
- the official code adds uniform noise in ``[0, 1e-6)`` to the densities "to ensure no tokens
  have the same density"; here there is no noise, and of two equal densities the token earlier
  in the recycled order counts as the denser;
- equal center scores go to the earlier token; a token equally near two centers joins the
  earlier center (as ``argmin`` does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: the share of the pruned tokens that is recycled (``int(P * 0.3) + 1`` of ``P``)
RECYCLED_FRACTION = 0.3
#: recycled tokens per merged token (``int(M / 10) + 1`` clusters of ``M``)
TOKENS_PER_CLUSTER = 10
#: added to each cluster's size before dividing (the official code's ``all_weight + 1e-6``)
WEIGHT_EPS = 1e-6


def recycled_count(num_pruned: int) -> int:
    """How many of ``num_pruned`` pruned tokens are recycled: the official ``int(P * 0.3) + 1`` (0 when none is pruned)."""
    return int(num_pruned * RECYCLED_FRACTION) + 1 if num_pruned > 0 else 0


def cluster_count(num_recycled: int) -> int:
    """How many merged tokens ``num_recycled`` recycled tokens give: the official ``int(M / 10) + 1`` (0 for none)."""
    return int(num_recycled / TOKENS_PER_CLUSTER) + 1 if num_recycled > 0 else 0


def merged_count(num_pruned: int) -> int:
    """Merged tokens a decision that prunes ``num_pruned`` visual tokens inserts."""
    return cluster_count(recycled_count(num_pruned))


def recycled_indices(scores: torch.Tensor) -> torch.Tensor:
    """``(M,)`` long: the recycled tokens among the pruned ones (``scores``: ``(P,)``, in position
    order), highest score first, equal scores in position order."""
    order = torch.sort(scores.float(), descending=True, stable=True).indices
    return order[: recycled_count(scores.shape[0])]


def density_peak_clusters(tokens: torch.Tensor, num_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centers, assignment)``: the density-peak clustering of ``tokens`` (``(M, D)``).

    centers: ``(num_clusters,)`` long, the center tokens, highest center score first;
    assignment: ``(M,)`` long, each token's cluster (an index into ``centers``).
    """
    x = tokens.float()
    count, dim = x.shape
    # direct differences (not the matrix-product shortcut): the official (x1 - x2).norm, exactly 0 on the diagonal
    distance = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") / dim**0.5
    nearest = torch.sort(distance, dim=1).values[:, :num_clusters]
    density = torch.exp(-(nearest**2).mean(dim=1))
    # j is denser than i: a higher density, or an equal one earlier in the order (no noise, see the module doc)
    index = torch.arange(count, device=x.device)
    denser = (density[None, :] > density[:, None]) | (
        (density[None, :] == density[:, None]) & (index[None, :] < index[:, None])
    )
    parent_distance = torch.where(denser, distance, distance.max()).min(dim=1).values
    center_score = parent_distance * density
    centers = torch.sort(center_score, descending=True, stable=True).indices[:num_clusters]
    assignment = distance[centers].argmin(dim=0)  # the first nearest center
    assignment[centers] = torch.arange(num_clusters, device=x.device)  # a center joins its own cluster
    return centers, assignment


def merge_clusters(tokens: torch.Tensor, assignment: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """``(num_clusters, D)`` float32: each cluster's states summed over ``its size + 1e-6``."""
    x = tokens.float()
    sizes = torch.zeros(num_clusters, device=x.device).index_add_(0, assignment, torch.ones(x.shape[0], device=x.device))
    weight = 1.0 / (sizes + WEIGHT_EPS)
    return torch.zeros(num_clusters, x.shape[1], device=x.device).index_add_(0, assignment, x * weight[assignment, None])


@dataclass(frozen=True)
class Recycled:
    """One sample's recycling at one decision.

    indices: ``(M,)`` long, the recycled tokens as indices into the pruned tokens (position
        order), highest score first.
    merged: ``(C, D)`` float32, the merged tokens in cluster order (highest center score first),
        ``C = int(M / 10) + 1``.
    """

    indices: torch.Tensor
    merged: torch.Tensor


def recycle(pruned_states: torch.Tensor, pruned_scores: torch.Tensor) -> Recycled:
    """SparseVLM v1.5's recycling of one sample's pruned visual tokens at one decision.

    Args:
        pruned_states: ``(P, D)`` the pruned tokens' states (the output of the scoring layer,
            the states entering the decision layer), in position order.
        pruned_scores: ``(P,)`` their scores at the decision.
    """
    indices = recycled_indices(pruned_scores)
    num_clusters = cluster_count(indices.shape[0])
    if num_clusters == 0:
        return Recycled(indices=indices, merged=pruned_states.new_zeros(0, pruned_states.shape[-1], dtype=torch.float32))
    tokens = pruned_states[indices]
    _, assignment = density_peak_clusters(tokens, num_clusters)
    return Recycled(indices=indices, merged=merge_clusters(tokens, assignment, num_clusters))
