"""CDPruner's selection against the official code (official.py: Theia-4869/CDPruner at 9541616;
docs/semantics.md §22)."""

from __future__ import annotations

import pytest
import torch
from tests.methods.cdpruner.official import official_encode

from reroute.methods.cdpruner import cdpruner_select, conditional_kernel, dpp_select


# (tokens N, kept T, text segments M): LLaVA-1.5's 576 at the tiers, and small shapes
@pytest.mark.parametrize("num_tokens, kept, segments", [(576, 192, 1), (576, 128, 2), (576, 64, 1), (36, 9, 3), (16, 16, 1)])
def test_picks_equal_the_official_code(num_tokens, kept, segments):
    g = torch.Generator().manual_seed(num_tokens + kept)
    torch.manual_seed(num_tokens)
    # wider than the tokens, as LLaVA's 4096 > 576: the kernel has full rank, every gain stays positive
    width = num_tokens + 64
    projector = torch.nn.Sequential(torch.nn.Linear(24, width), torch.nn.GELU(), torch.nn.Linear(width, width))
    for _ in range(4):
        features = torch.randn(1, num_tokens, 24, generator=g)
        image_embeds, text_embeds = torch.randn(1, num_tokens, 16, generator=g), torch.randn(segments, 16, generator=g)
        with torch.no_grad():
            projected, mask = official_encode(features, image_embeds, text_embeds, projector, kept)
            ours = cdpruner_select(projected[0], image_embeds[0], text_embeds, kept)
        assert ours.tolist() == torch.nonzero(mask[0]).flatten().tolist()


def test_a_pick_never_returns_and_counts_are_checked():
    kernel = torch.eye(3)
    assert sorted(dpp_select(kernel, 3).tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"^CDPruner keeps 1..3 of 3 tokens, got 4$"):
        dpp_select(kernel, 4)


def test_the_plain_cosine_is_the_official_relevance_of_the_negated_text():
    """The decoder-space relevance (negate=False) equals the official code's on the text embeddings negated,
    which is how the routing tests drive the official function; equal relevance everywhere gives ones."""
    from reroute.methods.cdpruner import instruction_relevance

    g = torch.Generator().manual_seed(0)
    v, t = torch.randn(30, 8, generator=g), torch.randn(5, 8, generator=g)
    torch.testing.assert_close(instruction_relevance(v, t, negate=False), instruction_relevance(v, -t), rtol=0, atol=0)
    assert torch.equal(instruction_relevance(torch.ones(4, 8), t), torch.ones(4))
    assert torch.equal(instruction_relevance(v, t[:0]), torch.ones(30))  # no instruction (the image ends the prompt)


def test_a_spent_kernel_rank_keeps_the_most_relevant_of_the_rest():
    """Tokens narrower than the kept count: after the DPP's rank is spent (3 picks for width 3), the rest are
    the unpicked tokens of largest relevance, so the count is always met and no pick repeats."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(20, 3, generator=g)
    relevance = torch.rand(20, generator=g) + 0.1
    kernel = conditional_kernel(tokens, relevance)
    picks = dpp_select(kernel, 10).tolist()
    assert len(set(picks)) == 10
    rest = [i for i in torch.argsort(relevance, descending=True).tolist() if i not in picks[:3]][:7]
    assert picks[3:] == rest
