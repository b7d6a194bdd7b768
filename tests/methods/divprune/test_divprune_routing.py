"""DivPrune and DivPrune + reroute through `reroute.apply` on tiny LLaVA-1.5, Qwen2-VL and Qwen2.5-VL
(docs/semantics.md §22), against the full-length reference with the official selection (official.py)."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.models_more import tiny_llava_next, tiny_qwen3_vl
from tests.helpers.vision_stage_checks import (
    ONE_GRID_FAMILIES,
    PER_IMAGE,
    check_batch_equals_alone,
    check_equals_reference,
    check_generate_equals_reference,
    check_counts_and_budget,
    check_keep_all_is_stock,
    check_paper_tier_costs,
    check_refuses_family,
    mixed,
    stock_image_tokens,
)
from tests.methods.divprune.official import Official

import reroute
from reroute import RoutingConfig
from reroute.methods import StageImage


@pytest.fixture(scope="module", params=list(ONE_GRID_FAMILIES))
def family(request):
    make_model, make_prompt, make_batch = ONE_GRID_FAMILIES[request.param]
    return make_model(), make_prompt, make_batch


def config_of(model, name: str) -> RoutingConfig:
    """The preset at 6 of 16 tokens (3/8, tier 216 of 576) on the tiny 6-layer decoder."""
    return reroute.preset(name, tier=PER_IMAGE * 3 / 8, model=model, num_visual=PER_IMAGE)


def official_images(fraction: float):
    """Each image's stock projected tokens, the official DivPrune's picks kept in ascending order."""

    def images(model, inputs):
        out = []
        for tokens, grid in stock_image_tokens(model, inputs):
            picks, _ = Official().DivPrune(tokens.float(), len(tokens), threshold_ratio=fraction)
            kept = torch.sort(picks).values
            out.append(StageImage(kept, tokens[kept], grid))
        return out

    return images


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
    check_counts_and_budget(family, "divprune", "divprune_reroute")


@pytest.mark.parametrize("tier", [192, 128, 64])
def test_pairs_at_the_paper_tiers_cost_the_same(tier):
    check_paper_tier_costs("divprune", "divprune_reroute", tier)


@pytest.mark.parametrize("make_model, family_name", [(tiny_qwen3_vl, "Qwen3-VL"), (tiny_llava_next, "LLaVA-NeXT/OneVision")])
def test_refuses_other_families_in_one_line(make_model, family_name):
    check_refuses_family("divprune", make_model(), family_name)


def test_params_are_checked():
    with pytest.raises(ValueError, match=r"^vision stage 'divprune': keep_fraction=0 is not in \(0, 1\]; pass K / N, e.g. 64 / 576$"):
        RoutingConfig(vision_stage="divprune", vision_params={"keep_fraction": 0})
    with pytest.raises(ValueError, match=r"^vision stage 'divprune' has no parameter 'per_cell': use keep_fraction$"):
        RoutingConfig(vision_stage="divprune", vision_params={"per_cell": 1})
