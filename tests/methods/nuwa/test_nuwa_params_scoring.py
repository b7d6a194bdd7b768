"""Nüwa budgets (docs/semantics.md §6) and the stage-2 scoring rules against a full-matrix reference."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.models import FAMILIES
from tests.helpers.reference import full_attention_map

from reroute.backbones import backbone_for
from reroute.methods.nuwa.params import LLAVA_TIERS, NuwaParams, NuwaRatios, llava_params, qwen_ratios
from reroute.methods.nuwa.scoring import last_rows, llava_stage2_scores, qwen_stage2_scores
from reroute.methods.attention import last_token_attention


# ----------------------------------------------------------------------------- budgets
@pytest.mark.parametrize("tier", [64, 128, 192])
def test_llava_tiers_average_to_their_tier(tier):
    params = llava_params(tier)
    assert (params.anchors + params.keep) / 2 == tier
    assert params.per_cell == tier // 64
    assert params.anchors <= 144 * params.per_cell  # enough candidates on the 24 x 24 grid


def test_qwen_ratio_rule():
    assert qwen_ratios(0.25).params(100) == NuwaParams(per_cell=3, anchors=35, keep=14)  # ceil 35.0, floor 14.7
    assert qwen_ratios(0.5).params(1001) == NuwaParams(per_cell=3, anchors=601, keep=396)  # ceil 600.6, floor 396.66
    assert qwen_ratios(0.75).params(90) == NuwaParams(per_cell=4, anchors=77, keep=53)  # ceil 76.5, floor 53.9
    # 90 x 0.7 is 62.99999999999999 in floating point; the rule means 63
    assert qwen_ratios(0.75).stage2_keep(90) == 63
    assert qwen_ratios(0.25).params(1) == NuwaParams(per_cell=3, anchors=1, keep=1)


def test_budget_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"^Nüwa has no LLaVA-1.5 budget for tier 96; pass one of \[64, 128, 192\]$"):
        llava_params(96)
    with pytest.raises(ValueError, match=r"^Nüwa has no Qwen2.5-VL rule for keep ratio 0.3; pass one of \[0.25, 0.5, 0.75\]$"):
        qwen_ratios(0.3)
    with pytest.raises(
        ValueError, match=r"^NuwaParams: keep=40 is not in 1..anchors=32; stage 2 keeps at most the K stage-1 tokens$"
    ):
        NuwaParams(per_cell=1, anchors=32, keep=40)
    with pytest.raises(
        ValueError, match=r"^NuwaParams: per_cell=5 is not in 1..4 \(a 2 x 2 cell has 4 patches\); pass 1, 2, 3 or 4$"
    ):
        NuwaParams(per_cell=5, anchors=32, keep=4)
    with pytest.raises(ValueError, match=r"^NuwaRatios: stage1_fraction=1.5 is not in \(0, 1\]; pass a fraction of the tokens to keep$"):
        NuwaRatios(stage1_fraction=1.5, per_cell=3, stage2_fraction=0.5)
    assert set(LLAVA_TIERS) == {64, 128, 192}


# ----------------------------------------------------------------------------- stage 2
def test_llava_stage2_is_the_spec_rule():
    assert llava_stage2_scores is last_token_attention


def test_last_rows_skip_padding_and_slack():
    key_valid = torch.tensor(
        [
            [False, False, True, True, True, True],  # left padding
            [True, True, False, True, False, False],  # slack inside, right padding
            [False, False, False, False, True, True],  # only two positions
        ]
    )
    index, present = last_rows(key_valid, torch.tensor([5, 3, 5]), 3)
    assert index.tolist() == [[3, 4, 5], [0, 1, 3], [5, 4, 5]]
    assert present.tolist() == [[True, True, True], [True, True, True], [False, True, True]]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
@torch.no_grad()
def test_qwen_stage2_scores_equal_full_matrix(family):
    model = FAMILIES[family].make_model()
    backbone = backbone_for(model)
    text_model = backbone.text_model(model)
    layer = text_model.layers[2]
    g = torch.Generator().manual_seed(0)
    batch, length = 3, 21
    hidden = torch.randn(batch, length, 64, generator=g)
    positions = torch.arange(length)[None].expand(batch, -1)
    if family != "llava":  # M-RoPE: distinct temporal/height/width rows
        positions = torch.stack([positions, positions // 2, positions % 5])
    cos, sin = backbone.rotary(text_model)(hidden, positions)
    key_valid = torch.rand(batch, length, generator=g) > 0.3
    query_index = torch.tensor([20, 14, 9])
    key_valid[torch.arange(batch), query_index] = True
    key_valid &= torch.arange(length)[None] <= query_index[:, None]
    scores = qwen_stage2_scores(layer, hidden, cos, sin, key_valid, query_index, backbone.apply_rotary)
    for b in range(batch):
        keys = torch.nonzero(key_valid[b]).flatten().tolist()
        rows = keys[-3:]
        logits, causal = full_attention_map(layer, hidden[b], cos[b], sin[b])  # (H, L, L), causal
        allowed = causal & key_valid[b][None, :]
        probs = logits.masked_fill(~allowed, float("-inf")).softmax(dim=-1)  # per head, per row
        expected = probs[:, rows].mean(dim=1).amax(dim=0)  # mean of the last 3 rows, max over heads
        torch.testing.assert_close(scores[b], expected, atol=1e-6, rtol=0)
        assert float(scores[b, ~key_valid[b]].abs().sum()) == 0.0
