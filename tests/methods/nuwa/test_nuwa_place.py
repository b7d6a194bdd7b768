"""Stage-1 tokens land at the positions the stock model gives those image tokens."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.nuwa_models import nuwa_llava

from reroute.methods.nuwa.params import NuwaParams
from tests.helpers.nuwa_place import place_stage1
from reroute.methods.nuwa.stage1 import Stage1Image, nuwa_llava_stage1

IMAGE = 3


def _prompts():
    """Two left-padded samples: one image, then two images between text tokens (36 image tokens each)."""
    first = [1, 7, 8] + [IMAGE] * 36 + [9, 10]
    second = [1, 7] + [IMAGE] * 36 + [11] + [IMAGE] * 36 + [12, 13]
    length = len(second)
    ids = torch.zeros(2, length, dtype=torch.long)
    ids[0, length - len(first) :] = torch.tensor(first)
    ids[1] = torch.tensor(second)
    return ids


@torch.no_grad()
def test_all_kept_with_stock_features_reproduces_the_stock_embeddings():
    model = nuwa_llava()
    ids = _prompts()
    pixels = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    text = model.model.get_input_embeddings()(ids)
    features = torch.cat(list(model.model.get_image_features(pixels).pooler_output))
    mask = ids == IMAGE
    stock = text.masked_scatter(mask[..., None], features)
    images = [Stage1Image(torch.arange(36), f, torch.zeros(36), (6, 6)) for f in features.split(36)]
    embeds, keep = place_stage1(text, mask, images)
    assert torch.equal(embeds, stock)
    assert bool(keep.all())


@torch.no_grad()
def test_kept_tokens_sit_at_their_images_positions_and_the_rest_are_dropped():
    model = nuwa_llava()
    ids = _prompts()
    pixels = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    images = nuwa_llava_stage1(model, pixels, NuwaParams(per_cell=1, anchors=5, keep=2))
    text = model.model.get_input_embeddings()(ids)
    mask = ids == IMAGE
    embeds, keep = place_stage1(text, mask, images)
    spans = [(0, torch.nonzero(mask[0]).flatten()), (1, torch.nonzero(mask[1]).flatten()[:36]), (1, torch.nonzero(mask[1]).flatten()[36:])]
    for image, (b, span) in zip(images, spans):
        assert torch.equal(embeds[b, span[image.kept]], image.tokens)
    assert torch.equal(embeds[~mask], text[~mask])
    assert keep.sum(dim=1).tolist() == [int((~mask[0]).sum()) + 5, int((~mask[1]).sum()) + 10]
    assert int((keep & mask).sum()) == 15


def test_image_count_mismatch_is_refused():
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, 2:6] = True
    image = Stage1Image(torch.arange(2), torch.zeros(2, 4), torch.zeros(9), (3, 3))
    with pytest.raises(
        ValueError,
        match=r"^the prompt has 4 image tokens but stage 1 saw images of 9 tokens in all; pass the images of exactly these prompts, in order$",
    ):
        place_stage1(torch.zeros(1, 10, 4), mask, [image])
