"""docs/semantics.md §2: the one-row scorer equals a naive full-matrix computation; selection rules."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.models import FAMILIES
from tests.helpers.reference import merged_rotary, reference_scores

from reroute.backbones import backbone_for
from reroute.methods.attention import last_token_attention
from reroute.runtime.decision import select_top_k


@pytest.mark.parametrize("family", list(FAMILIES))
@torch.no_grad()
def test_one_row_scores_equal_full_matrix(family):
    model = FAMILIES[family].make_model()
    backbone = backbone_for(model)
    text_model = backbone.text_model(model)
    layer = text_model.layers[2]
    g = torch.Generator().manual_seed(0)
    batch, length = 3, 23
    hidden = torch.randn(batch, length, 64, generator=g)
    positions = torch.arange(length)[None].expand(batch, -1)
    if backbone.positions(None, hidden, 0).rope.ndim == 3:  # M-RoPE: distinct temporal/height/width rows
        positions = torch.stack([positions, positions // 2, positions % 5])
    cos, sin = (merged_rotary(text_model.config, t) for t in backbone.rotary(text_model)(hidden, positions))
    key_valid = torch.rand(batch, length, generator=g) > 0.3
    query_index = torch.tensor([22, 15, 9])
    key_valid[torch.arange(batch), query_index] = True
    key_valid &= torch.arange(length)[None] <= query_index[:, None]  # keys precede the query
    scores = last_token_attention(layer, hidden, cos, sin, key_valid, query_index, backbone.apply_rotary)
    for b in range(batch):
        keys = torch.nonzero(key_valid[b]).flatten().tolist()
        expected = reference_scores(layer, hidden[b], cos[b], sin[b], keys)
        got = {j: float(scores[b, j]) for j in keys}
        assert got == pytest.approx(expected, abs=1e-6)
        assert float(scores[b, ~key_valid[b]].abs().sum()) == 0.0
        assert float(scores[b].sum()) == pytest.approx(1.0, abs=1e-5)


def test_scores_are_float32_for_half_inputs():
    model = FAMILIES["llava"].make_model().to(torch.bfloat16)
    backbone = backbone_for(model)
    text_model = backbone.text_model(model)
    hidden = torch.randn(1, 9, 64, dtype=torch.bfloat16)
    cos, sin = text_model.rotary_emb(hidden, torch.arange(9)[None])
    scores = last_token_attention(
        text_model.layers[1], hidden, cos, sin, torch.ones(1, 9, dtype=torch.bool), torch.tensor([8]), backbone.apply_rotary
    )
    assert scores.dtype == torch.float32


def test_select_top_k_breaks_ties_toward_lower_position():
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.2, 0.5, 0.9]])
    candidates = torch.tensor([[True, True, True, True, True, False]])
    chosen = select_top_k(scores, candidates, torch.tensor([2]))
    assert chosen.tolist() == [[False, True, True, False, False, False]]


def test_select_top_k_per_sample_counts_and_candidates_only():
    scores = torch.tensor([[0.9, 0.1, 0.3, 0.2], [0.0, 0.0, 0.0, 0.0]])
    candidates = torch.tensor([[False, True, True, True], [True, True, False, True]])
    chosen = select_top_k(scores, candidates, torch.tensor([2, 3]))
    assert chosen.tolist() == [[False, False, True, True], [True, True, False, True]]
