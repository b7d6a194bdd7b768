"""``vision_params`` of the ``nuwa`` vision stage reach Nüwa's stage 1: ``self_in_denominator`` (docs/nuwa.md)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tests.helpers.nuwa_models import nuwa_llava

import reroute
from reroute import RoutingConfig
from reroute.methods import get_vision_stage
from reroute.methods.nuwa import NuwaParams, nuwa_llava_stage1

GRID = 36  # nuwa_llava's 48 px images, 8 px patches -> 6 x 6 tokens


def _stage_images(model, pixels, vision_params: dict):
    config = RoutingConfig(vision_stage="nuwa", vision_params=vision_params)
    return get_vision_stage("nuwa").reduce(model, config.vision_parameters, {"pixel_values": pixels})


@torch.no_grad()
@pytest.mark.parametrize("switch", [True, 1])
def test_self_in_denominator_reaches_llava_stage1(switch):
    model = nuwa_llava()
    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    fraction, per_cell = 0.5, 2
    anchors = math.ceil(GRID * fraction)
    budget = NuwaParams(per_cell=per_cell, anchors=anchors, keep=anchors)
    reference = nuwa_llava_stage1(model, pixels, budget, self_in_denominator=True)
    default = nuwa_llava_stage1(model, pixels, budget)

    params = {"keep_fraction": fraction, "per_cell": per_cell}
    switched = _stage_images(model, pixels, {**params, "self_in_denominator": switch})
    unswitched = _stage_images(model, pixels, params)
    for got, expected in zip(switched, reference):
        assert torch.equal(got.kept, expected.kept)
        assert torch.equal(got.tokens, expected.tokens)
    for got, expected in zip(unswitched, default):
        assert torch.equal(got.tokens, expected.tokens)
    # the two denominators differ on the merged anchors of these images (the high-saliency ones pass unchanged)
    assert any(not torch.equal(a.tokens, b.tokens) for a, b in zip(switched, unswitched))


def test_self_in_denominator_defaults_off_and_round_trips():
    assert get_vision_stage("nuwa").resolved({})["self_in_denominator"] is False
    config = RoutingConfig(vision_stage="nuwa", vision_params={"self_in_denominator": True})
    assert RoutingConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert reroute.preset("nuwa", 64).vision_parameters["self_in_denominator"] is False
