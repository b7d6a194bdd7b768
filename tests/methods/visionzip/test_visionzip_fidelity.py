"""VisionZip's reduction against the official code's tensor functions (official.py: dvlab-research/VisionZip
at 3151f6d), on tiny CLIP towers in float32 (docs/semantics.md §22).

The official tower keeps the CLS token as one of its ``dominant`` tokens (``visionzip(model, dominant=54)``
keeps CLS + 53 patches); HF LLaVA has no prompt slot for CLS, so our ``dominant`` counts patches only:
ours at ``(d, c)`` is the official output at ``dominant_num = d`` (CLS + ``d`` patches) without its CLS row.
"""

from __future__ import annotations

import pytest
import torch
from tests.helpers.models import LLAVA_IMAGE_TOKEN, VOCAB
from tests.methods.visionzip.official import official_attention, official_visionzip

from reroute.backbones.released import build_llava, llava_config
from reroute.methods.visionzip import tower_inputs, visionzip_select


def clip_llava(image_size: int, depth: int = 3, seed: int = 0):
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=depth, num_attention_heads=4,
        image_size=image_size, patch_size=8, projection_dim=32,
    )  # fmt: skip
    text = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    config = llava_config(
        text, vision, image_token_id=LLAVA_IMAGE_TOKEN, vision_feature_select_strategy="default", vision_feature_layer=-2
    )
    return build_llava(config, seed=seed)


@torch.no_grad()
def official(model, pixels, dominant, contextual):
    """The official reduction at CLIP layer -2 of the tower (``output_attentions`` and the layer's metric, as it patches them)."""
    tower = model.model.vision_tower
    layers = getattr(tower, "vision_model", tower).encoder.layers
    hidden = tower(pixels, output_hidden_states=True).hidden_states
    layer = layers[-2]
    _, attn_weights, metric = official_attention(layer.self_attn, layer.layer_norm1(hidden[-3]))
    return official_visionzip(attn_weights, hidden[-2], metric, dominant, contextual, pixels)


# (image side in px -> (side / 8)^2 patches, dominant patches, contextual)
CASES = [(96, 54 * 144 // 576, 10 * 144 // 576 + 1), (96, 30, 10), (96, 100, 20), (96, 0, 7), (48, 10, 4), (48, 1, 35)]


@pytest.mark.parametrize("size, dominant, contextual", CASES)
def test_tokens_equal_the_official_code(size, dominant, contextual):
    model = clip_llava(size)
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(size + dominant))
    saved, indices = official(model, pixels, dominant, contextual)
    for b, image in enumerate(tower_inputs(model, pixels)):
        kept, tokens = visionzip_select(image, dominant, contextual)
        official_dominant = torch.sort(indices[b, 1:] - 1).values  # patch indices, CLS (0) left out
        is_dominant = torch.isin(kept, official_dominant)
        assert kept[is_dominant].tolist() == official_dominant.tolist()  # the same dominant patches
        assert int((~is_dominant).sum()) == contextual
        assert torch.equal(tokens[is_dominant], saved[b, 1 : 1 + dominant])  # passed unchanged
        torch.testing.assert_close(tokens[~is_dominant], saved[b, 1 + dominant :], atol=1e-5, rtol=0)  # merged


def test_contextual_targets_are_every_step_th_remaining_patch():
    """Positions (which the official code renumbers away): the targets are the remaining patches 0, s, 2s, ... in raster order."""
    model = clip_llava(48)
    (image,) = tower_inputs(model, torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(1)))
    kept, _ = visionzip_select(image, 6, 5)
    order = torch.sort(image.attention, descending=True, stable=True).indices
    rest = sorted(set(range(36)) - set(order[:6].tolist()))
    assert kept.tolist() == sorted(order[:6].tolist() + rest[0 : 5 * (30 // 5) : 30 // 5])


def test_no_contextual_and_everything_dominant():
    model = clip_llava(48)
    (image,) = tower_inputs(model, torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(2)))
    kept, tokens = visionzip_select(image, 7, 0)
    assert len(kept) == 7 and torch.equal(tokens, image.features[kept])
    kept, tokens = visionzip_select(image, 36, 3)
    assert kept.tolist() == list(range(36)) and torch.equal(tokens, image.features)
