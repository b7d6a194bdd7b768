"""V2Drop's decision against the official code (docs/semantics.md §20).

`official_v2drop_keep` carries the selection lines of xuyang-liu16/V2Drop (commit 219e03e,
llava/model/language_model/V2Drop.py, `V2DropLlamaModel.forward`), adapted only in how they are
called: the inline block is wrapped in a function whose arguments are the variables it reads (its
hard-coded 35-token prefix is kept, so the inputs here have 35 text tokens before the image).
"""

from __future__ import annotations

import torch

from reroute import RoutingConfig, preset
from reroute.budgets.shapes import ONE_TOKEN, geometric_then_one_shape
from reroute.methods.v2drop.scorer import V2DropScorer
from reroute.runtime.decision import ScoringInputs, select_top_k


# ---------------------------------------------------------------- official (xuyang-liu16/V2Drop @ 219e03e)
def official_v2drop_keep(current_hidden_states, prev_hidden_states, image_token_amount_after_selection, current_layer, device):
    candidate_indices = torch.arange(35, image_token_amount_after_selection + 35, device=device)
    current_candidates = current_hidden_states[:, candidate_indices, :]
    prev_candidates = prev_hidden_states[:, candidate_indices, :]

    l2_diff_candidate = torch.norm(current_candidates - prev_candidates, p=2, dim=-1)[0]

    if current_layer == 3:
        keep_ratio = 0.5
    if current_layer == 17:
        keep_ratio = 0.5
    if current_layer == 22:
        keep_ratio = 0

    k = max(1, int(image_token_amount_after_selection * keep_ratio))
    topk_values, topk_indices = torch.topk(l2_diff_candidate, k=k, largest=True)
    selected_indices = candidate_indices[topk_indices]
    return selected_indices
# ---------------------------------------------------------------- end of the official code


def _ours(current, previous, image, keep):
    length = current.shape[1]
    visual = torch.zeros(1, length, dtype=torch.bool)
    visual[0, 35 : 35 + image] = True
    inputs = ScoringInputs(
        layer=None, hidden=current, cos=None, sin=None, key_valid=torch.ones_like(visual), query_index=None,
        apply_rotary=None, visual=visual, candidates=visual, keep=torch.tensor([keep]),
        previous_hidden=previous, ran_previous=torch.ones_like(visual),
    )  # fmt: skip
    chosen = select_top_k(V2DropScorer().score(inputs), visual, torch.tensor([keep]))
    return torch.nonzero(chosen[0]).flatten().tolist()


def test_each_decision_keeps_the_official_tokens():
    """The official progression on LLaVA-1.5 (576 -> 288 -> 144 -> 1 at layers 3, 17, 22), on
    a scaled-down image block: at each of its layers the same tokens, 300 random cases."""
    for seed in range(100):
        g = torch.Generator().manual_seed(seed)
        image = 8 * int(torch.randint(2, 9, (1,), generator=g))  # halves twice to whole counts
        for layer, amount in ((3, image), (17, image // 2), (22, image // 4)):  # the tokens left at the layer
            current = torch.randn(1, 35 + amount + 6, 16, generator=g)
            previous = torch.randn(1, 35 + amount + 6, 16, generator=g)
            official = sorted(official_v2drop_keep(current, previous, amount, layer, "cpu").tolist())
            want = max(1, int(amount * (0.5 if layer != 22 else 0)))
            assert _ours(current, previous, amount, want) == official, (seed, layer)


def test_the_published_schedule_keeps_the_official_counts():
    """Ratios relative to the current count become ratios of the prompt's visual tokens: 0.5, 0.25, one token."""
    config = preset("v2drop", tier=192, ratios="paper")
    assert config.decision_layers == (3, 17, 22)
    assert config.keep_counts(576) == (288, 144, 1)
    assert config.keep_ratios == (0.5, 0.25, ONE_TOKEN)


def test_the_shape_halves_then_keeps_one_token():
    assert geometric_then_one_shape(0.5, 3) == (0.5, 0.25, ONE_TOKEN)
    assert geometric_then_one_shape(0.5, 1) == (0.5,)  # one decision: the shape must grow with p
    assert RoutingConfig("remove", (1, 2, 3), (0.5, 0.25, ONE_TOKEN)).keep_counts(100) == (50, 25, 1)
