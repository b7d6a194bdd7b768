"""SparseVLM v1.5's recycling (`reroute.methods.sparsevlm.recycle`) against the official code
(tests/methods/sparsevlm/official.py: `recycle_pruned` and `cluster_and_merge` of b9619e6),
on many tiny random samples in float32: the same recycled tokens in the same order, the same
merged tokens within 1e-5.

The official code adds uniform noise in [0, 1e-6) to the densities (torch's global generator,
seeded per case here); ours has none and breaks equal densities by order (docs/semantics.md §21).
The two can only differ where that noise can reorder densities or center scores; those cases
are counted, not compared, and must stay rare.
"""

from __future__ import annotations

import torch
from tests.methods.sparsevlm import official

from reroute.methods.sparsevlm.recycle import (
    cluster_count,
    density_peak_clusters,
    merge_clusters,
    merged_count,
    recycle,
    recycled_count,
    recycled_indices,
)

CASES = 400
NOISE = 1e-6  # the official density noise's range


def random_sample(case: int, g: torch.Generator):
    """One one-image prompt's states entering the decision layer, its visual block and scores."""
    prefix, text, dim = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 6, (1,), generator=g)), (3, 8, 16)[case % 3]
    num_visual = int(torch.randint(2, 40, (1,), generator=g)) if case % 2 else int(torch.randint(40, 260, (1,), generator=g))
    length = prefix + num_visual + text
    if case % 4 < 2:  # unstructured states
        # at the scale of real states: distances over sqrt(D) of order 1, densities far above the noise
        states = torch.randn(length, dim, generator=g) * (0.5, 1.0, 1.5)[case % 3]
    else:  # a few well separated groups: the clustering has something to find
        centers = torch.randn(int(torch.randint(2, 8, (1,), generator=g)), dim, generator=g) * 4
        states = centers[torch.randint(0, centers.shape[0], (length,), generator=g)] + 0.3 * torch.randn(length, dim, generator=g)
    kept = torch.zeros(num_visual, dtype=torch.bool)
    kept[torch.randperm(num_visual, generator=g)[: int(torch.randint(1, num_visual, (1,), generator=g))]] = True
    scores = torch.rand(num_visual, generator=g)
    return prefix, states, kept, scores


def official_recycling(prefix, states, kept, scores, seed):
    """The official statements on the one-sample batch the official forward would hold."""
    policy = torch.ones(1, states.shape[0])
    policy[0, prefix : prefix + kept.shape[0]] = kept.float()
    torch.manual_seed(seed)  # the density noise
    return official.recycle_pruned((states[None],), policy, kept[None], scores[None])


def noise_ties(tokens: torch.Tensor) -> int:
    """How many pairs of densities (adjacent in density order) are closer than the official noise
    moves them, i.e. where the noise decides which token is the denser. Equal densities are common,
    not rare: with two clusters (``k = 2`` nearest: the token itself and its nearest neighbour)
    every pair of mutual nearest neighbours has the same density. One cluster takes every token,
    whatever the noise."""
    k = cluster_count(tokens.shape[0])
    if k < 2:
        return 0
    distance = (tokens[:, None] - tokens[None]).norm(dim=-1) / tokens.shape[1] ** 0.5
    density = torch.exp(-(distance.sort(dim=1).values[:, :k] ** 2).mean(dim=1))
    return int((density.sort().values.diff() < 2 * NOISE).sum())


def error(ours: torch.Tensor, official_merged: torch.Tensor) -> float:
    return float((ours - official_merged[0]).abs().max()) if ours.shape == official_merged.shape[1:] else float("inf")


def test_recycled_and_merged_tokens_equal_the_official_code():
    """Where the noise cannot matter: equal within 1e-5. Where it decides ties (which of two
    equally dense tokens is the denser, at random per run): ours is one of the official code's
    outcomes on that input (the one whose noise favours the earlier token), found among its seeds."""
    g = torch.Generator().manual_seed(0)
    compared, decided, worst, clusters_seen = 0, 0, 0.0, set()
    for case in range(CASES):
        prefix, states, kept, scores = random_sample(case, g)
        pruned = torch.nonzero(~kept).flatten()
        official_indices, official_merged = official_recycling(prefix, states, kept, scores, seed=case)
        ours = recycle(states[prefix + pruned], scores[pruned])
        # which tokens are recycled, in which order: no noise is involved (random scores have no ties)
        assert ours.indices.tolist() == official_indices.tolist(), case
        assert ours.merged.shape[0] == merged_count(pruned.shape[0])
        clusters_seen.add(ours.merged.shape[0])
        ties = noise_ties(states[prefix + pruned][ours.indices])
        if ties:
            decided += 1
            outcomes = (official_recycling(prefix, states, kept, scores, seed=1000 * case + s)[1] for s in range(300))
            assert any(error(ours.merged, merged) < 1e-5 for merged in outcomes), case
            continue
        compared += 1
        worst = max(worst, error(ours.merged, official_merged))
    assert worst < 1e-5, worst
    assert compared >= CASES * 3 // 4, (compared, decided)
    assert max(clusters_seen) >= 8 and 1 in clusters_seen, clusters_seen  # one cluster up to many


def test_counts_are_the_official_expressions():
    # int(P * 0.3) + 1 in Python floats: 10 * 0.3 = 3.0000000000000004 -> 3 + 1; 0 pruned: nothing to recycle
    assert [recycled_count(p) for p in (0, 1, 3, 4, 10, 20, 33, 575)] == [0, 1, 1, 2, 4, 7, 10, 173]
    assert [cluster_count(m) for m in (0, 1, 9, 10, 19, 20, 173)] == [0, 1, 1, 2, 2, 3, 18]
    assert merged_count(575) == 18


def test_equal_scores_recycle_in_position_order():
    scores = torch.tensor([0.5, 0.7, 0.5, 0.7, 0.1, 0.5, 0.5, 0.5, 0.5, 0.5])  # 10 pruned: 4 recycled
    assert recycled_indices(scores).tolist() == [1, 3, 0, 2]


def test_equal_densities_are_broken_by_order_not_by_noise():
    """Two groups of identical tokens: every density is 1 and every center score ties. Ours takes
    the earliest token of each group as its center and merges each group into one token (sum over
    size + 1e-6), the earlier group first. The official code's noise (1e-6 on a density of 1, a few
    float32 steps) leaves ties among 11 tokens and its top-k may then put both centers in one group."""
    a, b = torch.tensor([1.0, 2.0, 0.0, -1.0]), torch.tensor([-3.0, 0.5, 2.0, 4.0])
    tokens = torch.stack([b] * 5 + [a] * 6)  # 11 tokens: 2 clusters, b's group first in order
    centers, assignment = density_peak_clusters(tokens, 2)
    assert centers.tolist() == [0, 5] and assignment.tolist() == [0] * 5 + [1] * 6
    merged = merge_clusters(tokens, assignment, 2)
    expected = torch.stack([b * 5 / (5 + 1e-6), a * 6 / (6 + 1e-6)])
    torch.testing.assert_close(merged, expected, rtol=0, atol=1e-6)


def test_nothing_pruned_recycles_nothing():
    out = recycle(torch.zeros(0, 8), torch.zeros(0))
    assert out.indices.shape == (0,) and out.merged.shape == (0, 8)
