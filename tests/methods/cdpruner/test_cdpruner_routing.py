"""CDPruner and CDPruner + reroute through `reroute.apply` on tiny LLaVA-1.5, Qwen2-VL and Qwen2.5-VL
(docs/semantics.md §22), against the full-length reference with the official selection (official.py)
driven by each sample's instruction, derived here from the prompt independently of the stage."""

from __future__ import annotations

import re

import pytest
import torch
from tests.helpers.models_more import tiny_llava_next, tiny_qwen3_vl
from tests.helpers.vision_stage_checks import (
    ONE_GRID_FAMILIES,
    PER_IMAGE,
    check_batch_equals_alone,
    check_counts_and_budget,
    check_equals_reference,
    check_generate_equals_reference,
    check_keep_all_is_stock,
    check_paper_tier_costs,
    check_refuses_family,
    mixed,
    stock_image_tokens,
)
from tests.methods.cdpruner.official import official_encode

import reroute
from reroute import RoutingConfig
from reroute.backbones import backbone_for
from reroute.methods import StageImage, get_vision_stage
from reroute.methods.vision_stage import StagePrompt
from reroute.methods.cdpruner.parts import IMAGES_AND_PROMPT, NO_PROMPT


@pytest.fixture(scope="module", params=list(ONE_GRID_FAMILIES))
def family(request):
    make_model, make_prompt, make_batch = ONE_GRID_FAMILIES[request.param]
    return make_model(), make_prompt, make_batch


def config_of(model, name: str) -> RoutingConfig:
    """The preset at 6 of 16 tokens (3/8, tier 216 of 576) on the tiny 6-layer decoder."""
    return reroute.preset(name, tier=PER_IMAGE * 3 / 8, model=model, num_visual=PER_IMAGE)


def official_images(fraction: float):
    """Each image's stock projected tokens, the official CDPruner's picks, its relevance in the decoder's
    embedding space: the instruction is the sample's real tokens after its last image token, embedded by the
    decoder; the official code's sign (CLIP's) is undone by passing those embeddings negated."""

    @torch.no_grad()
    def images(model, inputs):
        ids, real = inputs["input_ids"], inputs["attention_mask"].bool()
        image = ids == model.config.image_token_id
        tokens_of = iter(stock_image_tokens(model, inputs))
        out = []
        for b in range(ids.shape[0]):
            placed = torch.nonzero(image[b]).flatten()
            if not len(placed):
                continue
            last = int(placed[-1])
            text = model.get_input_embeddings()(ids[b, last + 1 :][real[b, last + 1 :]])
            remaining = len(placed)
            while remaining:
                tokens, grid = next(tokens_of)
                remaining -= len(tokens)
                kept_count = max(1, round(len(tokens) * fraction))
                _, mask = official_encode(tokens[None].float(), tokens[None].float(), -text.float(), torch.nn.Identity(), kept_count)
                kept = torch.nonzero(mask[0]).flatten()
                out.append(StageImage(kept, tokens[kept], grid))
        return out

    return images


@pytest.mark.parametrize("name", ["cdpruner", "cdpruner_reroute"])
def test_equals_full_length_reference(family, name):
    model, make_prompt, make_batch = family
    config = config_of(model, name)
    images = official_images(config.vision_parameters["keep_fraction"])
    check_equals_reference(model, config, make_batch(mixed(make_prompt), "left"), images)


@pytest.mark.parametrize("name", ["cdpruner", "cdpruner_reroute"])
def test_batch_equals_samples_alone(family, name):
    model, make_prompt, make_batch = family
    check_batch_equals_alone(model, config_of(model, name), mixed(make_prompt), make_batch)


@pytest.mark.parametrize("name", ["cdpruner", "cdpruner_reroute"])
def test_generate_equals_reference_decode(family, name):
    """generate() encodes the images before its first forward (transformers 5.24): the stage reads generate's prompt."""
    model, make_prompt, make_batch = family
    config = config_of(model, name)
    images = official_images(config.vision_parameters["keep_fraction"])
    check_generate_equals_reference(model, config, make_batch([make_prompt(2, seed=4)], "left"), images)


def test_keeping_every_token_is_the_stock_model(family):
    model, make_prompt, make_batch = family
    config = reroute.preset("cdpruner", tier=PER_IMAGE, model=model, num_visual=PER_IMAGE)
    assert config.vision_parameters == {"keep_fraction": 1.0}
    check_keep_all_is_stock(model, config, make_batch(mixed(make_prompt), "left"))


def test_the_instruction_decides_the_kept_tokens(family):
    """The same image under different instructions keeps different tokens (the relevance is not a constant),
    and the stage keeps what the official selection keeps for each."""
    model, make_prompt, make_batch = family
    fraction = config_of(model, "cdpruner").vision_parameters["keep_fraction"]
    stage, backbone = get_vision_stage("cdpruner"), backbone_for(model)
    kept = set()
    for seed in range(4):
        prompt = make_prompt(1, seed=0)
        g = torch.Generator().manual_seed(100 + seed)
        prompt.ids[-4:] = torch.randint(5, 50, (4,), generator=g).tolist()  # another question, the same image
        inputs = make_batch([prompt], "left")
        ids = inputs["input_ids"]
        stage_prompt = StagePrompt(ids, inputs["attention_mask"].bool(), backbone.visual_mask(model.config, ids))
        (ours,) = stage.reduce(model, {"keep_fraction": fraction}, dict(inputs, prompt=stage_prompt))
        (official,) = official_images(fraction)(model, inputs)
        assert ours.kept.tolist() == official.kept.tolist()
        kept.add(tuple(ours.kept.tolist()))
    assert len(kept) > 1


def test_counts_per_layer_and_the_same_budget(family):
    check_counts_and_budget(family, "cdpruner", "cdpruner_reroute")


@pytest.mark.parametrize("tier", [192, 128, 64])
def test_pairs_at_the_paper_tiers_cost_the_same(tier):
    check_paper_tier_costs("cdpruner", "cdpruner_reroute", tier)


@pytest.mark.parametrize("make_model, family_name", [(tiny_qwen3_vl, "Qwen3-VL"), (tiny_llava_next, "LLaVA-NeXT/OneVision")])
def test_refuses_other_families_in_one_line(make_model, family_name):
    check_refuses_family("cdpruner", make_model(), family_name)


def test_a_call_without_input_ids_is_refused_in_one_line(family):
    model, make_prompt, make_batch = family
    inputs = make_batch([make_prompt(1, seed=0)], "left")
    ids = inputs.pop("input_ids")
    inputs["inputs_embeds"] = model.get_input_embeddings()(ids)
    with reroute.apply(model, config_of(model, "cdpruner")), pytest.raises(ValueError, match=f"^{re.escape(NO_PROMPT)}$"):
        model(**inputs)
    assert "forward" not in model.model.__dict__


def test_images_that_do_not_fill_the_prompt_are_refused(family):
    model, make_prompt, make_batch = family
    inputs = make_batch([make_prompt(1, seed=0)], "left")
    inputs["input_ids"][inputs["input_ids"] == model.config.image_token_id] = 5  # the image has no placeholders
    with reroute.apply(model, config_of(model, "cdpruner")), pytest.raises(ValueError, match=f"^{re.escape(IMAGES_AND_PROMPT)}$"):
        model(**inputs)


def test_params_are_checked():
    with pytest.raises(ValueError, match=r"^vision stage 'cdpruner': keep_fraction=1.5 is not in \(0, 1\]; pass K / N, e.g. 64 / 576$"):
        RoutingConfig(vision_stage="cdpruner", vision_params={"keep_fraction": 1.5})
    with pytest.raises(ValueError, match=r"^vision stage 'cdpruner' has no parameter 'theta': use keep_fraction$"):
        RoutingConfig(vision_stage="cdpruner", vision_params={"theta": 0.5})
    assert "\n" not in NO_PROMPT and "\n" not in IMAGES_AND_PROMPT
