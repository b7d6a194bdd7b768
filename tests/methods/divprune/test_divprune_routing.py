"""DivPrune and DivPrune + reroute through `reroute.apply` on tiny LLaVA-1.5, Qwen2-VL and Qwen2.5-VL
(docs/semantics.md §22), against the full-length reference with the official selection (official.py)."""

from __future__ import annotations

import re

import pytest
import torch
from tests.helpers.harness import routed
from tests.helpers.models import llava_batch, llava_prompt, qwen_batch, qwen_prompt, tiny_llava, tiny_qwen
from tests.helpers.models_more import tiny_llava_next, tiny_qwen3_vl
from tests.helpers.vision_stage_checks import (
    check_batch_equals_alone,
    check_equals_reference,
    check_generate_equals_reference,
    check_keep_all_is_stock,
)
from tests.methods.divprune.official import Official

import reroute
from reroute import RoutingConfig
from reroute.backbones.llava import llava_1_5_7b
from reroute.backbones.qwen2_5_vl import qwen2_5_vl_7b
from reroute.budgets import avg_t
from reroute.methods import StageImage

PER_IMAGE = 16  # LLaVA: 4 x 4 patches; Qwen: the 8 x 8-patch image, 4 x 4 merged tokens (the other has 4 x 6)


def qwen_images(num_images: int, seed: int, text_before: int = 3):
    grids = [((1, 8, 8), (1, 8, 12))[(seed + i) % 2] for i in range(num_images)]
    return qwen_prompt(image_grids=grids, text_before=text_before, seed=seed)


def llava_images(num_images: int, seed: int, text_before: int = 3):
    return llava_prompt(num_images, text_before=text_before, seed=seed)


FAMILIES = {
    "llava": (tiny_llava, llava_images, llava_batch),
    "qwen2_5_vl": (lambda: tiny_qwen("qwen2_5_vl"), qwen_images, qwen_batch),
    "qwen2_vl": (lambda: tiny_qwen("qwen2_vl"), qwen_images, qwen_batch),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    make_model, make_prompt, make_batch = FAMILIES[request.param]
    return make_model(), make_prompt, make_batch


def config_of(model, name: str) -> RoutingConfig:
    """The preset at 6 of 16 tokens (3/8, tier 216 of 576) on the tiny 6-layer decoder."""
    return reroute.preset(name, tier=PER_IMAGE * 3 / 8, model=model, num_visual=PER_IMAGE)


def official_images(fraction: float):
    """Each image's stock projected tokens, the official DivPrune's picks kept in ascending order."""

    @torch.no_grad()
    def images(model, inputs):
        inner = model.model
        if "image_grid_thw" in inputs:
            grid_thw = inputs["image_grid_thw"]
            features = inner.get_image_features(pixel_values=inputs["pixel_values"], image_grid_thw=grid_thw).pooler_output
            grids = [(h // 2, w // 2) for _, h, w in grid_thw.tolist()]
        else:
            config = model.config
            features = inner.get_image_features(
                pixel_values=inputs["pixel_values"], vision_feature_layer=config.vision_feature_layer,
                vision_feature_select_strategy=config.vision_feature_select_strategy,
            ).pooler_output  # fmt: skip
            grids = [(4, 4)] * len(features)
        out = []
        for tokens, grid in zip(features, grids):
            picks, _ = Official().DivPrune(tokens.float(), len(tokens), threshold_ratio=fraction)
            kept = torch.sort(picks).values
            out.append(StageImage(kept, tokens[kept], grid))
        return out

    return images


def mixed(make_prompt):
    return [make_prompt(2, seed=1, text_before=3), make_prompt(1, seed=2, text_before=6), make_prompt(0, seed=3)]


@pytest.mark.parametrize("name", ["divprune", "divprune_reroute"])
def test_equals_full_length_reference(family, name):
    model, make_prompt, make_batch = family
    config = config_of(model, name)
    images = official_images(config.vision_parameters["keep_fraction"])
    check_equals_reference(model, config, make_batch(mixed(make_prompt), "left"), images)


@pytest.mark.parametrize("name", ["divprune", "divprune_reroute"])
def test_batch_equals_samples_alone(family, name):
    model, make_prompt, make_batch = family
    check_batch_equals_alone(model, config_of(model, name), mixed(make_prompt), make_batch)


@pytest.mark.parametrize("name", ["divprune", "divprune_reroute"])
def test_generate_equals_reference_decode(family, name):
    model, make_prompt, make_batch = family
    config = config_of(model, name)
    images = official_images(config.vision_parameters["keep_fraction"])
    check_generate_equals_reference(model, config, make_batch([make_prompt(2, seed=4)], "left"), images)


def test_keeping_every_token_is_the_stock_model(family):
    model, make_prompt, make_batch = family
    config = reroute.preset("divprune", tier=PER_IMAGE, model=model, num_visual=PER_IMAGE)
    assert config.vision_parameters == {"keep_fraction": 1.0}
    check_keep_all_is_stock(model, config, make_batch(mixed(make_prompt), "left"))


def test_counts_per_layer_and_the_same_budget(family):
    """K tokens enter the decoder (removal: all layers; rerouted: K' then k), as `reroute.cost` predicts;
    the pair's continuous avg_T is the tier on the tiny decoder and the integer ones differ by rounding only."""
    model, make_prompt, make_batch = family
    inputs = make_batch([make_prompt(1, seed=0)], "left")  # qwen: the 4 x 4 merged grid (seed 0)
    counts = {}
    for name in ("divprune", "divprune_reroute"):
        config = config_of(model, name)
        _, trace = routed(model, config, inputs)
        report = reroute.cost(config, model, num_visual=PER_IMAGE, num_text=inputs["input_ids"].shape[1] - PER_IMAGE)
        assert trace[0].visual_per_layer == report.visual_per_layer
        assert avg_t(config, 6, PER_IMAGE) == pytest.approx(6.0, abs=1e-9)
        counts[name] = sum(trace[0].visual_per_layer) / 6
    assert counts["divprune"] == 6.0 and abs(counts["divprune_reroute"] - 6.0) <= 1.0


@pytest.mark.parametrize("tier", [192, 128, 64])
def test_pairs_at_the_paper_tiers_cost_the_same(tier):
    """On LLaVA-1.5-7B and Qwen2.5-VL-7B shapes: the same avg_T (integer counts), decoder KV cache and the
    paper formula's FLOPs within 0.5 % (the stage's selection adds the same vision-side FLOPs)."""
    for shape, depth in ((llava_1_5_7b(), 32), (qwen2_5_vl_7b(), 28)):
        removal = reroute.preset("divprune", tier, model=shape)
        rerouted = reroute.preset("divprune_reroute", tier, model=shape)
        assert removal.decoder_visual_count(576) == tier
        assert avg_t(removal, depth, 576, integer=True) == tier
        assert abs(avg_t(rerouted, depth, 576, integer=True) - tier) < 1.0
        a, b = reroute.cost(removal, shape, num_visual=576), reroute.cost(rerouted, shape, num_visual=576)
        assert a.vision_stage_flops == b.vision_stage_flops > 0
        assert abs(a.kv_cache_bytes - b.kv_cache_bytes) <= a.kv_cache_bytes * 0.01
    on_32 = reroute.preset("divprune_reroute", tier, model=llava_1_5_7b())
    assert on_32.decision_layers == (16, 24) and on_32.decoder_visual_count(576) == tier * 7 // 4
    assert reroute.cost(on_32, llava_1_5_7b(), num_visual=576).kv_cache_bytes == reroute.cost(
        reroute.preset("divprune", tier, model=llava_1_5_7b()), llava_1_5_7b(), num_visual=576
    ).kv_cache_bytes


@pytest.mark.parametrize("make_model, family_name", [(tiny_qwen3_vl, "Qwen3-VL"), (tiny_llava_next, "LLaVA-NeXT/OneVision")])
def test_refuses_other_families_in_one_line(make_model, family_name):
    model = make_model()
    message = (
        "vision stage 'divprune' is defined for LlavaForConditionalGeneration, Qwen2VLForConditionalGeneration, "
        f"Qwen2_5_VLForConditionalGeneration (one token grid per image), not {family_name}; use vision_stage=None"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        reroute.apply(model, RoutingConfig(action="remove", decision_layers=(5,), keep_ratios=(1.0,), vision_stage="divprune"))
    assert "forward" not in model.__dict__  # refused before any state changed
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        reroute.preset("divprune", 4, model=model, num_visual=16)


def test_params_are_checked():
    with pytest.raises(ValueError, match=r"^vision stage 'divprune': keep_fraction=0 is not in \(0, 1\]; pass K / N, e.g. 64 / 576$"):
        RoutingConfig(vision_stage="divprune", vision_params={"keep_fraction": 0})
    with pytest.raises(ValueError, match=r"^vision stage 'divprune' has no parameter 'per_cell': use keep_fraction$"):
        RoutingConfig(vision_stage="divprune", vision_params={"per_cell": 1})
