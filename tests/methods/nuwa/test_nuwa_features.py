"""Nüwa stage-1 inputs equal the stock towers' own eager attention and hidden states (slow references)."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.nuwa_models import nuwa_llava, nuwa_qwen, qwen_pixels
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl

from reroute.methods.nuwa.features import llava_vision_features, qwen_vision_features, scaled_range


def test_scaled_range_is_identity_at_the_reference_depth_and_shrinks_below():
    assert scaled_range(16, 24, 24, 24) == range(16, 25)
    assert scaled_range(7, 23, 32, 32) == range(7, 24)
    assert scaled_range(16, 24, 24, 4) == range(2, 5)
    assert scaled_range(7, 23, 32, 4) == range(0, 3)


# ----------------------------------------------------------------------------- LLaVA
@torch.no_grad()
def test_llava_saliency_is_the_eager_cls_row_of_the_selected_layer():
    model, eager = nuwa_llava("sdpa"), nuwa_llava("eager")
    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    got = llava_vision_features(model, pixels)
    stock = eager.model.vision_tower(pixels, output_hidden_states=True, output_attentions=True)
    # as the reference code indexes it: attentions[vision_feature_layer], CLS query row, patch keys, head sum
    expected = stock.attentions[model.config.vision_feature_layer][:, :, 0, 1:].sum(dim=1)
    for b in range(2):
        assert got[b].grid == (6, 6)
        torch.testing.assert_close(got[b].saliency, expected[b], atol=1e-5, rtol=0)
    assert not torch.allclose(expected[0], expected[0].mean().expand(36), atol=1e-3)  # the test tower discriminates


@torch.no_grad()
def test_llava_x_is_what_llava_projects_and_f_averages_the_scaled_layers():
    model = nuwa_llava()
    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    got = llava_vision_features(model, pixels)
    stock = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    projected = torch.stack(list(model.model.get_image_features(pixels).pooler_output))
    for b in range(2):
        torch.testing.assert_close(model.model.multi_modal_projector(got[b].features), projected[b], atol=1e-6, rtol=0)
        f = (stock[2][b, 1:] + stock[3][b, 1:] + stock[4][b, 1:]) / 3  # hidden states 16..24 of 24, scaled to 4 layers
        torch.testing.assert_close(got[b].similarity, f, atol=1e-6, rtol=0)


def test_llava_refuses_the_full_strategy():
    model = nuwa_llava()
    model.config.vision_feature_select_strategy = "full"
    with pytest.raises(
        ValueError,
        match=r"^Nüwa needs vision_feature_select_strategy='default' \(CLS dropped\), got 'full'; load the model with the default strategy$",
    ):
        llava_vision_features(model, torch.zeros(1, 3, 48, 48))


# ----------------------------------------------------------------------------- Qwen2.5-VL
GRIDS = [(1, 8, 12), (1, 6, 10), (1, 10, 6)]  # merged 4 x 6, 3 x 5 (odd sides), 5 x 3


def _stock_qwen_reference(model, pixels, grids, monkeypatch):
    """Eager tower, stock code: the last block's full attention maps, block outputs, and the window -> raster map.

    The raster map is found by matching the tower's own raster-ordered output rows with the
    merger applied to the last block's (window-ordered) output: no window index involved.
    """
    visual = model.model.visual
    maps, outputs = [], {}
    original = modeling_qwen2_5_vl.eager_attention_forward

    def recording(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        out, weights = original(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
        if module is visual.blocks[-1].attn:
            maps.append(weights[0].float())  # (H, Ls, Ls): one segment (image) per call
        return out, weights

    monkeypatch.setattr(modeling_qwen2_5_vl, "eager_attention_forward", recording)
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o)) for i, b in enumerate(visual.blocks)]
    raster_out = visual(pixels, grid_thw=grids).pooler_output
    for h in hooks:
        h.remove()
    window_out = visual.merger(outputs[len(visual.blocks) - 1])
    window_of_raster = torch.cdist(raster_out, window_out).argmin(dim=1)
    assert torch.equal(window_out[window_of_raster], raster_out)
    return maps, outputs, window_of_raster


@torch.no_grad()
def test_qwen_saliency_is_the_eager_last_block_attention_in_raster_order(monkeypatch):
    model, eager = nuwa_qwen("sdpa"), nuwa_qwen("eager")
    assert len(model.model.visual.blocks) - 1 in model.config.vision_config.fullatt_block_indexes
    pixels, grids = qwen_pixels(GRIDS)
    got = qwen_vision_features(model, pixels, grids)
    maps, _, window_of_raster = _stock_qwen_reference(eager, pixels, grids, monkeypatch)
    assert [m.shape[-1] for m in maps] == [t * h * w for t, h, w in GRIDS]  # full attention, one segment per image
    received = torch.cat([m.mean(dim=0).sum(dim=0) for m in maps])  # head mean, column sum (window order)
    merged = received.view(-1, 4).mean(dim=1)[window_of_raster]
    assert not torch.equal(window_of_raster, torch.arange(len(window_of_raster)))  # window order is not raster order here
    start = 0
    for image, (_, h, w) in zip(got, GRIDS):
        assert image.grid == (h // 2, w // 2)
        n = image.grid[0] * image.grid[1]
        torch.testing.assert_close(image.saliency, merged[start : start + n], atol=1e-5, rtol=0)
        start += n


@torch.no_grad()
def test_qwen_similarity_and_x_are_in_raster_order(monkeypatch):
    model = nuwa_qwen("eager")
    pixels, grids = qwen_pixels(GRIDS, seed=3)
    got = qwen_vision_features(model, pixels, grids)
    _, outputs, window_of_raster = _stock_qwen_reference(model, pixels, grids, monkeypatch)
    visual = model.model.visual
    f = visual.merger((outputs[0] + outputs[1] + outputs[2]) / 3)[window_of_raster]  # blocks 7..23 of 32, scaled to 4
    stock = torch.cat(model.model.get_image_features(pixels, grids).pooler_output)
    torch.testing.assert_close(torch.cat([g.similarity for g in got]), f, atol=1e-6, rtol=0)
    assert torch.equal(torch.cat([g.features for g in got]), stock)


def test_qwen_refuses_videos():
    model = nuwa_qwen()
    pixels, grids = qwen_pixels([(2, 4, 4)])
    with pytest.raises(
        ValueError, match=r"^Nüwa stage 1 handles still images \(t = 1\), got grids \[\[2, 4, 4\]\]; run videos without Nüwa$"
    ):
        qwen_vision_features(model, pixels, grids)
