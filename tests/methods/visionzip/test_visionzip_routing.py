"""VisionZip and VisionZip + reroute through `reroute.apply` on a tiny LLaVA-1.5 (docs/semantics.md §22),
against the full-length reference with the official reduction (official.py)."""

from __future__ import annotations

import re

import pytest
import torch
from tests.helpers.harness import routed
from tests.helpers.models import llava_batch, llava_prompt, tiny_llava, tiny_qwen
from tests.helpers.models_more import tiny_mistral3
from tests.helpers.vision_stage_checks import (
    check_batch_equals_alone,
    check_equals_reference,
    check_generate_equals_reference,
    check_keep_all_is_stock,
)
from tests.methods.visionzip.official import official_attention, official_visionzip

import reroute
from reroute import RoutingConfig
from reroute.backbones.llava import llava_1_5_7b
from reroute.budgets import avg_t
from reroute.methods import StageImage
from reroute.methods.visionzip.parts import split

PER_IMAGE = 16  # 4 x 4 patches


@pytest.fixture(scope="module")
def model():
    return tiny_llava()


def prompts():
    return [llava_prompt(2, text_before=3, seed=1), llava_prompt(1, text_before=6, seed=2), llava_prompt(0, seed=3)]


def config_of(model, name: str) -> RoutingConfig:
    """The preset at 6 of 16 tokens on the tiny 6-layer decoder (removal: 5 dominant + 1 contextual)."""
    return reroute.preset(name, tier=PER_IMAGE * 3 / 8, model=model, num_visual=PER_IMAGE)


def official_images(params):
    """The official reduction of each image (positions: its dominant patches and its targets among the rest), projected."""

    @torch.no_grad()
    def images(model, inputs):
        dominant, contextual = split(PER_IMAGE, params)
        pixels = inputs["pixel_values"]
        tower = model.model.vision_tower
        layer = tower.vision_model.encoder.layers[-2] if hasattr(tower, "vision_model") else tower.encoder.layers[-2]
        hidden = tower(pixels, output_hidden_states=True).hidden_states
        _, weights, metric = official_attention(layer.self_attn, layer.layer_norm1(hidden[-3]))
        saved, indices = official_visionzip(weights, hidden[-2], metric, dominant, contextual, pixels)
        out = []
        for b in range(len(pixels)):
            rest = sorted(set(range(PER_IMAGE)) - set((indices[b, 1:] - 1).tolist()))
            step = max(1, len(rest) // contextual)
            targets = [rest[i] for i in range(0, len(rest), step)][:contextual]
            positions = torch.tensor(sorted((indices[b, 1:] - 1).tolist()) + targets)  # the official output's order
            tokens = model.model.multi_modal_projector(saved[b, 1:])  # without CLS, which has no prompt slot
            order = torch.argsort(positions)
            out.append(StageImage(positions[order], tokens[order], (4, 4)))
        return out

    return images


@pytest.mark.parametrize("name", ["visionzip", "visionzip_reroute"])
def test_equals_full_length_reference(model, name):
    config = config_of(model, name)
    check_equals_reference(model, config, llava_batch(prompts()), official_images(config.vision_parameters))


@pytest.mark.parametrize("name", ["visionzip", "visionzip_reroute"])
def test_batch_equals_samples_alone(model, name):
    check_batch_equals_alone(model, config_of(model, name), prompts(), llava_batch)


@pytest.mark.parametrize("name", ["visionzip", "visionzip_reroute"])
def test_generate_equals_reference_decode(model, name):
    config = config_of(model, name)
    inputs = llava_batch([llava_prompt(2, seed=4)])
    check_generate_equals_reference(model, config, inputs, official_images(config.vision_parameters))


def test_keeping_every_token_is_the_stock_model(model):
    config = reroute.preset("visionzip", tier=PER_IMAGE, model=model, num_visual=PER_IMAGE)
    check_keep_all_is_stock(model, config, llava_batch(prompts()))


def test_counts_per_layer_and_the_same_budget(model):
    inputs = llava_batch([llava_prompt(1, seed=0)])
    for name in ("visionzip", "visionzip_reroute"):
        config = config_of(model, name)
        _, trace = routed(model, config, inputs)
        report = reroute.cost(config, model, num_visual=PER_IMAGE, num_text=inputs["input_ids"].shape[1] - PER_IMAGE)
        assert trace[0].visual_per_layer == report.visual_per_layer and report.vision_stage_flops > 0
        assert avg_t(config, 6, PER_IMAGE) == pytest.approx(6.0, abs=1e-9)
        assert abs(sum(trace[0].visual_per_layer) / 6 - 6.0) <= 1.0


@pytest.mark.parametrize("tier, dominant, contextual", [(192, 162, 30), (128, 108, 20), (64, 54, 10)])
def test_paper_tiers(tier, dominant, contextual):
    """VisionZip's published splits at 576 tokens, and the pair at the same avg_T and KV cache on LLaVA-1.5-7B."""
    shape = llava_1_5_7b()
    removal, rerouted = reroute.preset("visionzip", tier, model=shape), reroute.preset("visionzip_reroute", tier, model=shape)
    assert split(576, removal.vision_parameters) == (dominant, contextual)
    assert avg_t(removal, 32, 576, integer=True) == tier == avg_t(rerouted, 32, 576, integer=True)
    a, b = reroute.cost(removal, shape, num_visual=576), reroute.cost(rerouted, shape, num_visual=576)
    assert a.kv_cache_bytes == b.kv_cache_bytes


@pytest.mark.parametrize("make_model, family", [(lambda: tiny_qwen("qwen2_5_vl"), "Qwen2.5-VL"), (tiny_mistral3, "Mistral 3")])
def test_refuses_towers_without_cls_in_one_line(make_model, family):
    target = make_model()
    message = (
        f"vision stage 'visionzip' ranks patches by a CLIP tower's CLS attention (LLaVA-1.5); {family} has no such tower: "
        "use vision_stage='divprune' or None"
    )
    config = RoutingConfig(action="remove", decision_layers=(5,), keep_ratios=(1.0,), vision_stage="visionzip")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        reroute.apply(target, config)
    assert "forward" not in target.__dict__
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        reroute.preset("visionzip_reroute", 4, model=target.config, num_visual=16)


def test_params_are_checked():
    with pytest.raises(ValueError, match=r"^vision stage 'visionzip': contextual_share=1.0 is not in \[0, 1\); pass contextual / K, e.g. 10 / 64$"):
        RoutingConfig(vision_stage="visionzip", vision_params={"contextual_share": 1.0})
    with pytest.raises(ValueError, match=r"^vision stage 'visionzip': keep_fraction=1.5 is not in \(0, 1\]; pass K / N, e.g. 64 / 576$"):
        RoutingConfig(vision_stage="visionzip", vision_params={"keep_fraction": 1.5})
