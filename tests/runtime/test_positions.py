"""Routed tokens keep their original rotary positions, in prefill and in decode (docs/semantics.md §3, §5)."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.models import FAMILIES, qwen_batch, qwen_prompt
from tests.helpers.reference import merged_rotary

import reroute
from reroute import RoutingConfig


def _capture_rotary(model, layer_index, run):
    """cos tables that layer `layer_index` receives, one entry per forward call."""
    seen = []
    layer = model.model.language_model.layers[layer_index]

    def hook(module, args, kwargs):
        cos = merged_rotary(model.config.get_text_config(), kwargs["position_embeddings"][0])
        seen.append(cos.expand(1, -1, -1)[0].clone())

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("family", list(FAMILIES))
def test_routed_tokens_keep_unrouted_rotary_positions(family):
    model = FAMILIES[family].make_model()
    prompt = FAMILIES[family].make_prompt(2, size=1, seed=4)
    inputs = FAMILIES[family].make_batch([prompt])
    generate = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
    vanilla = _capture_rotary(model, 4, lambda: model.generate(**inputs, **generate))
    config = RoutingConfig("reroute", (1, 3), (0.25, 0.5))
    with reroute.apply(model, config) as handle:
        routed = _capture_rotary(model, 4, lambda: model.generate(**inputs, **generate))
    ids = inputs["input_ids"][0]
    visual = set(torch.nonzero((ids == model.config.image_token_id)).flatten().tolist())
    active = sorted((set(range(len(ids))) - visual) | set(handle.trace[0].selected[1]))
    # prefill: compact row j sits at original position active[j]
    assert routed[0].shape[0] == len(active) < vanilla[0].shape[0]
    assert torch.equal(routed[0], vanilla[0][active])
    # decode steps: positions continue from the full prompt length (rope deltas on Qwen)
    assert len(routed) == len(vanilla) == 4
    for step in range(1, 4):
        assert torch.equal(routed[step], vanilla[step])


def test_video_and_images_form_one_candidate_pool():
    model = FAMILIES["qwen2_5_vl"].make_model()
    prompt = qwen_prompt(image_grids=((1, 4, 8),), video_grids=((2, 4, 4),), seed=3)
    inputs = qwen_batch([prompt])
    ids = inputs["input_ids"][0]
    image = set(torch.nonzero(ids == model.config.image_token_id).flatten().tolist())
    video = set(torch.nonzero(ids == model.config.video_token_id).flatten().tolist())
    assert len(image) == 8 and len(video) == 8
    with reroute.apply(model, RoutingConfig("remove", (2,), (0.5,))) as handle, torch.no_grad():
        model(**inputs)
    sample = handle.trace[0]
    assert sample.num_visual == 16 and len(sample.selected[0]) == 8
    assert set(sample.selected[0]) <= image | video
