"""DivPrune's selection against the official code's tensor functions (docs/semantics.md §22; the official
``pairwise_cosine_similarity`` and ``DivPrune``, vbdi/divprune at 799e2d9, are in official.py)."""

from __future__ import annotations

import pytest
import torch

from reroute.methods.divprune import divprune_select
from reroute.methods.vision_stage import kept_by_fraction
from tests.methods.divprune.official import Official


#: (tokens N, width D, ratio): LLaVA-1.5's 576 at the three tiers, and small odd shapes
CASES = [(576, 64, 192 / 576), (576, 64, 128 / 576), (576, 64, 64 / 576), (36, 16, 0.5), (17, 8, 0.3), (5, 4, 1.0)]


@pytest.mark.parametrize("num_tokens, width, ratio", CASES)
def test_picks_equal_the_official_code(num_tokens, width, ratio):
    equal = 0
    for seed in range(8):
        tokens = torch.randn(num_tokens, width, generator=torch.Generator().manual_seed(seed))
        official, _ = Official().DivPrune(tokens, num_tokens, threshold_ratio=ratio)
        count = kept_by_fraction(num_tokens, ratio)
        assert count == len(official)  # the same count rule
        ours = divprune_select(tokens, count)
        assert ours.tolist() == official.tolist()  # the same picks in the same order
        assert torch.sort(ours).values.tolist() == sorted(set(official.tolist()))  # what is kept
        equal += 1
    assert equal == 8


def test_ties_go_to_the_lower_index_and_a_pick_never_returns():
    """Two copies of each of 3 points: the official code picks a copy again once only copies remain; ours
    picks every token once, the lower copy first."""
    base = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    tokens = torch.cat([base, base])  # token i and i + 3 are equal
    official, _ = Official().DivPrune(tokens, 6, threshold_ratio=1.0)
    ours = divprune_select(tokens, 6)
    assert ours[:3].tolist() == official[:3].tolist() and sorted(ours[:3].tolist()) == [0, 1, 2]
    assert sorted(ours.tolist()) == list(range(6))
    assert len(set(official.tolist())) < 6  # the official code repeated a pick


def test_refuses_counts_outside_the_tokens():
    tokens = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"^DivPrune keeps 1..4 of 4 tokens, got 5$"):
        divprune_select(tokens, 5)
