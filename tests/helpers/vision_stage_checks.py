"""Invariants of a pre-LLM vision stage and its presets through `reroute.apply` (docs/semantics.md §22).

Each check takes a model, a routing config and the stage's images computed independently of the
engine (``images(model, inputs) -> [StageImage]``, e.g. from the official code's functions) and
compares the routed model with the full-length reference (tests/helpers/reference.py): the kept
tokens written at their prompt positions (`place_stage1`), the dropped ones in no layer, every
other token at its original position, decisions by docs/semantics.md §2's rule.
"""

from __future__ import annotations

import re

import pytest
import torch
from tests.helpers.harness import decoder_inputs, rotary_positions, routed
from tests.helpers.models import llava_batch, llava_prompt, qwen_batch, qwen_prompt, tiny_llava, tiny_qwen
from tests.helpers.nuwa_place import place_stage1
from tests.helpers.reference import reference_forward

import reroute
from reroute import RoutingConfig
from reroute.backbones import backbone_for
from reroute.backbones.llava import llava_1_5_7b
from reroute.backbones.qwen2_5_vl import qwen2_5_vl_7b
from reroute.budgets import avg_t

ATOL = 2e-5

PER_IMAGE = 16  # LLaVA: 4 x 4 patches; Qwen: the 8 x 8-patch image, 4 x 4 merged tokens (the other has 4 x 6)


def qwen_images(num_images: int, seed: int, text_before: int = 3):
    grids = [((1, 8, 8), (1, 8, 12))[(seed + i) % 2] for i in range(num_images)]
    return qwen_prompt(image_grids=grids, text_before=text_before, seed=seed)


def llava_images(num_images: int, seed: int, text_before: int = 3):
    return llava_prompt(num_images, text_before=text_before, seed=seed)


#: the families with one token grid per image (DivPrune's and CDPruner's): (model, prompt, batch) makers
ONE_GRID_FAMILIES = {
    "llava": (tiny_llava, llava_images, llava_batch),
    "qwen2_5_vl": (lambda: tiny_qwen("qwen2_5_vl"), qwen_images, qwen_batch),
    "qwen2_vl": (lambda: tiny_qwen("qwen2_vl"), qwen_images, qwen_batch),
}


def mixed(make_prompt) -> list:
    """Three prompts: two images, one image after more text, none."""
    return [make_prompt(2, seed=1, text_before=3), make_prompt(1, seed=2, text_before=6), make_prompt(0, seed=3)]


@torch.no_grad()
def stock_image_tokens(model, inputs: dict) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    """Each image's stock projected tokens and token grid (the tiny models' grids), in prompt order."""
    inner = model.model
    if "image_grid_thw" in inputs:
        grid_thw = inputs["image_grid_thw"]
        features = inner.get_image_features(pixel_values=inputs["pixel_values"], image_grid_thw=grid_thw).pooler_output
        return list(zip(features, [(h // 2, w // 2) for _, h, w in grid_thw.tolist()]))
    config = model.config
    features = inner.get_image_features(
        pixel_values=inputs["pixel_values"], vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
    ).pooler_output  # fmt: skip
    return [(tokens, (4, 4)) for tokens in features]


@torch.no_grad()
def reference_stage(model, inputs: dict, images) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The stock decoder inputs, the embeddings with the stage's tokens written in, and which positions stay."""
    captured = decoder_inputs(model, inputs)
    image_mask = inputs["input_ids"] == model.config.image_token_id
    embeds, present = place_stage1(captured["inputs_embeds"], image_mask, images(model, inputs))
    return captured, embeds, present


@torch.no_grad()
def reference_per_sample(model, inputs: dict, config, images, **scoring) -> list:
    """Per sample: its real positions that entered the decoder, the reference logits there, its decisions.

    ``scoring``: how the reference scores (`tests.helpers.reference.reference_forward`'s ``score_*``
    arguments; the default is docs/semantics.md §2's rule at the decision layer)."""
    captured, embeds, present = reference_stage(model, inputs, images)
    visual = backbone_for(model).visual_mask(model.config, inputs["input_ids"])
    text_model = model.model.language_model
    mask = inputs["attention_mask"].bool()
    out = []
    for b in range(embeds.shape[0]):
        real = torch.nonzero(mask[b]).flatten()
        offset, length = int(real[0]), len(real)
        pos = rotary_positions(captured, b, length, offset)
        hidden, decisions = reference_forward(
            text_model, pos, embeds[b, real], visual[b, real].tolist(), config, present=present[b, real].tolist(),
            **scoring,
        )
        out.append((real[present[b, real]], model.lm_head(hidden)[present[b, real]], decisions))
    return out


def check_equals_reference(model, config, inputs: dict, images, instruction_encoder=None) -> None:
    """Prefill logits at every position that entered the decoder, and the decisions, equal the reference's."""
    out, trace = routed(model, config, inputs, instruction_encoder=instruction_encoder)
    assert not bool(out.logits.isnan().any())
    mask = inputs["attention_mask"].bool()
    for b, (kept, logits, decisions) in enumerate(reference_per_sample(model, inputs, config, images)):
        torch.testing.assert_close(out.logits[b, kept], logits, atol=ATOL, rtol=0)
        offset = int(torch.nonzero(mask[b]).flatten()[0])
        shifted = [tuple(offset + j for j in chosen) for chosen in decisions]
        assert list(trace[b].selected) == (shifted if trace[b].routed else [()] * config.num_decisions)


def check_batch_equals_alone(model, config, prompts: list, make_batch, new: int = 5, instruction_encoder=None) -> None:
    """A padded batch (right-padded forward, left-padded generate) equals each sample alone."""
    inputs = make_batch(prompts, "right")
    out, _ = routed(model, config, inputs, instruction_encoder=instruction_encoder)
    mask = inputs["attention_mask"].bool()
    with reroute.apply(model, config, instruction_encoder=instruction_encoder), torch.no_grad():
        batch_ids = model.generate(**make_batch(prompts, "left"), max_new_tokens=new, do_sample=False)
        for b, prompt in enumerate(prompts):
            alone_inputs = make_batch([prompt], "left")
            alone = model(**alone_inputs)
            real = torch.nonzero(mask[b]).flatten()
            torch.testing.assert_close(out.logits[b, real], alone.logits[0], atol=ATOL, rtol=0)
            alone_ids = model.generate(**alone_inputs, max_new_tokens=new, do_sample=False)
            assert torch.equal(batch_ids[b, -new:], alone_ids[0, -new:])


@torch.no_grad()
def check_generate_equals_reference(model, config, inputs: dict, images, new: int = 6, instruction_encoder=None) -> None:
    """Greedy generate() (one sample) == the reference over prompt + generated tokens with the prefill's decisions."""
    # the tiny random models may pick their image / video markers: suppressed, so generated tokens are text
    specials = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    suppressed = sorted({getattr(model.config, name) for name in specials if getattr(model.config, name, None) is not None})
    with reroute.apply(model, config, instruction_encoder=instruction_encoder):
        ids = model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False, suppress_tokens=suppressed)
    prompt_length = inputs["input_ids"].shape[1]
    _, embeds, present = reference_stage(model, inputs, images)
    visual = backbone_for(model).visual_mask(model.config, ids[:, :-1])[0].tolist()
    ((_, _, decisions),) = reference_per_sample(model, inputs, config, images)
    extended = dict(inputs, input_ids=ids[:, :-1], attention_mask=torch.ones_like(ids[:, :-1]))
    if "mm_token_type_ids" in inputs:
        pad = torch.zeros(1, new - 1, dtype=torch.long)
        extended["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], pad], dim=1)
    captured = decoder_inputs(model, extended)
    full = captured["inputs_embeds"][0].clone()
    full[:prompt_length] = embeds[0]
    hidden, _ = reference_forward(
        model.model.language_model, rotary_positions(captured, 0, ids.shape[1] - 1, 0), full, visual, config,
        decisions=decisions, present=present[0].tolist(),
    )
    logits = model.lm_head(hidden)
    logits[:, model.generation_config.eos_token_id] = float("-inf")  # min_new_tokens = new: generate() never ends early
    logits[:, suppressed] = float("-inf")
    predicted = logits.argmax(-1)
    assert torch.equal(predicted[prompt_length - 1 :], ids[0, prompt_length:])


@torch.no_grad()
def check_keep_all_is_stock(model, config, inputs: dict) -> None:
    """A stage that keeps every token (keep fraction 1.0, no decision that drops) gives the stock logits."""
    stock = model(**inputs).logits
    out, _ = routed(model, config, inputs)
    mask = inputs["attention_mask"].bool()
    torch.testing.assert_close(out.logits[mask], stock[mask], atol=ATOL, rtol=0)


def check_counts_and_budget(family, removal: str, rerouted: str) -> None:
    """K tokens enter the decoder (removal: all layers; rerouted: K' then k), as `reroute.cost` predicts;
    the pair's continuous avg_T is the tier (6 of 16) on the tiny 6-layer decoder and the integer ones
    differ by rounding only."""
    model, make_prompt, make_batch = family
    inputs = make_batch([make_prompt(1, seed=0)], "left")  # qwen: the 4 x 4 merged grid (seed 0)
    counts = {}
    for name in (removal, rerouted):
        config = reroute.preset(name, tier=PER_IMAGE * 3 / 8, model=model, num_visual=PER_IMAGE)
        _, trace = routed(model, config, inputs)
        report = reroute.cost(config, model, num_visual=PER_IMAGE, num_text=inputs["input_ids"].shape[1] - PER_IMAGE)
        assert trace[0].visual_per_layer == report.visual_per_layer
        assert avg_t(config, 6, PER_IMAGE) == pytest.approx(6.0, abs=1e-9)
        counts[name] = sum(trace[0].visual_per_layer) / 6
    assert counts[removal] == 6.0 and abs(counts[rerouted] - 6.0) <= 1.0


def check_paper_tier_costs(removal: str, rerouted: str, tier: int) -> None:
    """On LLaVA-1.5-7B and Qwen2.5-VL-7B shapes: the same avg_T (integer counts) and decoder KV cache within 1 %;
    the stage's selection adds the same vision-side FLOPs to both; on 32 layers the rerouted preset's K' is 7/4
    of the tier and its KV cache equals the removal preset's."""
    for shape, depth in ((llava_1_5_7b(), 32), (qwen2_5_vl_7b(), 28)):
        a_config, b_config = reroute.preset(removal, tier, model=shape), reroute.preset(rerouted, tier, model=shape)
        assert a_config.decoder_visual_count(576) == tier
        assert avg_t(a_config, depth, 576, integer=True) == tier
        assert abs(avg_t(b_config, depth, 576, integer=True) - tier) < 1.0
        a, b = reroute.cost(a_config, shape, num_visual=576), reroute.cost(b_config, shape, num_visual=576)
        assert a.vision_stage_flops > 0 and b.vision_stage_flops > 0
        assert abs(a.kv_cache_bytes - b.kv_cache_bytes) <= a.kv_cache_bytes * 0.01
    on_32 = reroute.preset(rerouted, tier, model=llava_1_5_7b())
    assert on_32.decision_layers == (16, 24) and on_32.decoder_visual_count(576) == tier * 7 // 4
    assert reroute.cost(on_32, llava_1_5_7b(), num_visual=576).kv_cache_bytes == reroute.cost(
        reroute.preset(removal, tier, model=llava_1_5_7b()), llava_1_5_7b(), num_visual=576
    ).kv_cache_bytes


def check_refuses_family(stage: str, model, family_name: str) -> None:
    """``stage`` (a one-grid stage) is refused on ``model`` in one line, by apply and by its preset, and apply changes nothing."""
    message = (
        f"vision stage {stage!r} is defined for LlavaForConditionalGeneration, Qwen2VLForConditionalGeneration, "
        f"Qwen2_5_VLForConditionalGeneration (one token grid per image), not {family_name}; use vision_stage=None"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        reroute.apply(model, RoutingConfig(action="remove", decision_layers=(5,), keep_ratios=(1.0,), vision_stage=stage))
    assert "forward" not in model.__dict__  # refused before any state changed
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        reroute.preset(stage, 4, model=model, num_visual=16)
