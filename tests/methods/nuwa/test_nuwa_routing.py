"""Nüwa and Nüwa + reroute through `reroute.apply` (docs/semantics.md §6), against a full-length reference.

The reference (reference.py) runs one sample at full length: stage 1 is computed with
`reroute.methods.nuwa`'s functions directly and placed with `place_stage1`; the dropped image tokens
take part in no layer; every other token keeps its original position; stage 2 is scored from
the full attention map of the layer before the decision. The routed model must equal it on
every real position, in prefill and in greedy decoding, alone and in batches.
"""

from __future__ import annotations

import dataclasses
import math
import json

import pytest
import torch
from tests.helpers.harness import decoder_inputs, rotary_positions, routed
from tests.helpers.models import LLAVA_IMAGE_TOKEN, VOCAB, Prompt, llava_batch, qwen_batch, qwen_prompt, tiny_qwen
from tests.helpers.reference import reference_forward

import reroute
from reroute import RoutingConfig
from reroute.backbones import backbone_for
from reroute.budgets import avg_t
from reroute.backbones.llava import llava_1_5_7b
from reroute.backbones.qwen2_5_vl import qwen2_5_vl_7b
from reroute.backbones.released import build_llava, llava_config
from reroute.methods.nuwa import NuwaParams, NuwaRatios, nuwa_llava_stage1, nuwa_qwen_stage1
from tests.helpers.nuwa_place import place_stage1
from tests.helpers.vision_stage_checks import reference_per_sample as vision_stage_per_sample
from reroute.runtime.compat import CACHE_KEYWORD, output_cache

ATOL = 2e-5
GRID = 36  # LLaVA test images: 48 px, 8 px patches -> 6 x 6 tokens


def nuwa_llava_model(attn: str = "sdpa", num_layers: int = 6):
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=48, patch_size=8, projection_dim=32,
    )  # fmt: skip
    text = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    config = llava_config(
        text, vision, image_token_id=LLAVA_IMAGE_TOKEN, vision_feature_select_strategy="default", vision_feature_layer=-2
    )
    return build_llava(config, attn=attn)


def llava_prompt(num_images: int, seed: int, text_before: int = 3) -> Prompt:
    g = torch.Generator().manual_seed(seed)
    ids = [1] + torch.randint(5, VOCAB, (text_before,), generator=g).tolist()
    for _ in range(num_images):
        ids += [LLAVA_IMAGE_TOKEN] * GRID + torch.randint(5, VOCAB, (1,), generator=g).tolist()
    ids += torch.randint(5, VOCAB, (4,), generator=g).tolist()
    return Prompt(ids=ids, images=torch.randn(num_images, 3, 48, 48, generator=g))


def qwen_nuwa_prompt(num_images: int, seed: int, text_before: int = 3):
    # merged grids 4 x 6 and 4 x 4 (windows of 2 x 2 merged tokens: window order != raster order)
    grids = [((1, 8, 12), (1, 8, 8))[(seed + i) % 2] for i in range(num_images)]
    return qwen_prompt(image_grids=grids, text_before=text_before, seed=seed)


FAMILIES = {
    "llava": (nuwa_llava_model, llava_prompt, llava_batch),
    "qwen2_5_vl": (lambda attn="sdpa": tiny_qwen("qwen2_5_vl", attn), qwen_nuwa_prompt, qwen_batch),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    make_model, make_prompt, make_batch = FAMILIES[request.param]
    return request.param, make_model(), make_prompt, make_batch


def nuwa_config(model, name: str, per_image: int) -> RoutingConfig:
    """The preset at the tier 64/576 of the image's tokens, on the tiny model's 6 layers."""
    return reroute.preset(name, tier=max(1.0, 64 * per_image / 576) * 2, model=model, num_visual=per_image)


def scoring_of(config: RoutingConfig) -> dict:
    if config.scorer == "nuwa_qwen":
        return dict(score_offset=-1, score_rows=3, score_heads="max")
    return dict(score_offset=-1, score_rows=1, score_heads="mean")


@torch.no_grad()
def reference_stage1(model, inputs: dict, config: RoutingConfig):
    """Stage 1 with reroute.methods.nuwa's functions: the decoder's input embeddings and which positions stay."""
    captured = decoder_inputs(model, inputs)
    p = config.vision_parameters
    if "image_grid_thw" in inputs:
        ratios = NuwaRatios(stage1_fraction=p["keep_fraction"], per_cell=p["per_cell"], stage2_fraction=1.0)
        images = nuwa_qwen_stage1(model, inputs["pixel_values"], inputs["image_grid_thw"], ratios)
    else:
        anchors = math.ceil(round(GRID * p["keep_fraction"], 9))
        images = nuwa_llava_stage1(model, inputs["pixel_values"], NuwaParams(p["per_cell"], anchors, anchors))
    image_mask = inputs["input_ids"] == model.config.image_token_id
    embeds, present = place_stage1(captured["inputs_embeds"], image_mask, images)
    return captured, embeds, present, images


def reference_per_sample(model, inputs: dict, config: RoutingConfig):
    """Per sample: its real positions that entered the decoder, the reference logits there, decisions
    (stage 1 by `reference_stage1`, stage 2 scored as Nüwa scores)."""

    def images(model, inputs):
        return reference_stage1(model, inputs, config)[3]

    return vision_stage_per_sample(model, inputs, config, images, **scoring_of(config))


def mixed_batch(make_prompt, make_batch, padding_side="left"):
    prompts = [make_prompt(2, seed=1, text_before=3), make_prompt(1, seed=2, text_before=6), make_prompt(0, seed=3)]
    return prompts, make_batch(prompts, padding_side)


# ----------------------------------------------------------------------------- engine == reference
@pytest.mark.parametrize("name", ["nuwa", "nuwa_reroute"])
def test_nuwa_equals_full_length_reference(family, name):
    family_name, model, make_prompt, make_batch = family
    per_image = GRID if family_name == "llava" else 24
    config = nuwa_config(model, name, per_image)
    _, inputs = mixed_batch(make_prompt, make_batch)
    out, trace = routed(model, config, inputs)
    assert not bool(out.logits.isnan().any())  # dropped rows are present, finite, not meaningful
    mask = inputs["attention_mask"].bool()
    for b, (kept, logits, decisions) in enumerate(reference_per_sample(model, inputs, config)):
        torch.testing.assert_close(out.logits[b, kept], logits, atol=ATOL, rtol=0)
        offset = int(torch.nonzero(mask[b]).flatten()[0])
        shifted = [tuple(offset + j for j in chosen) for chosen in decisions]
        assert list(trace[b].selected) == (shifted if trace[b].routed else [()] * config.num_decisions)


@pytest.mark.parametrize("name", ["nuwa", "nuwa_reroute"])
def test_counts_per_layer_and_cache(family, name):
    """K visual tokens enter the decoder, exactly k from the stage-2 layer on, and each layer's cache holds its tokens."""
    family_name, model, make_prompt, make_batch = family
    per_image = GRID if family_name == "llava" else 24
    config = nuwa_config(model, name, per_image)
    prompt = make_prompt(1, seed=0)  # qwen: the 4 x 6 grid, 24 tokens
    inputs = make_batch([prompt])
    out, trace = routed(model, config, inputs, use_cache=True)
    kept = config.decoder_visual_count(per_image)
    k = config.keep_counts(kept)[0]
    first = config.decision_layers[0]
    assert trace[0].num_visual == kept
    assert trace[0].visual_per_layer == (kept,) * first + (k,) * (6 - first)
    num_text = inputs["input_ids"].shape[1] - per_image
    lengths = [layer.keys.shape[-2] for layer in output_cache(out).layers]
    assert lengths == [num_text + v for v in trace[0].visual_per_layer] == list(trace.cache_lengths)
    # and the cost report predicts those counts and the cache bytes
    report = reroute.cost(config, model, num_visual=per_image, num_text=num_text)
    assert report.visual_per_layer == trace[0].visual_per_layer
    measured = sum(t.numel() * t.element_size() for layer in output_cache(out).layers for t in (layer.keys, layer.values))
    assert measured == report.kv_cache_bytes
    assert report.vision_stage_flops > 0


@pytest.mark.parametrize("name", ["nuwa", "nuwa_reroute"])
def test_positions_are_the_unpruned_ones(family, name):
    """The rotary tables layer 0 receives are the stock ones at the kept tokens' original positions."""
    family_name, model, make_prompt, make_batch = family
    config = nuwa_config(model, name, GRID if family_name == "llava" else 24)
    inputs = make_batch([make_prompt(1, seed=1)])
    captured, _, present, _ = reference_stage1(model, inputs, config)
    text_model = model.model.language_model
    pos = rotary_positions(captured, 0, inputs["input_ids"].shape[1], 0)
    cos, _ = text_model.rotary_emb(captured["inputs_embeds"], pos)
    seen = {}

    def hook(module, args, kwargs):
        seen["cos"] = kwargs["position_embeddings"][0]

    handle = text_model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        routed(model, config, inputs)
    finally:
        handle.remove()
    assert torch.equal(seen["cos"][0], cos[0, present[0]])


@pytest.mark.parametrize("name", ["nuwa", "nuwa_reroute"])
def test_generate_equals_reference_decode(family, name):
    """Greedy generate() == the reference over prompt + generated tokens with the prefill's decisions
    (decode positions continue from the full prompt length although layer 0's cache is shorter)."""
    family_name, model, make_prompt, make_batch = family
    config = nuwa_config(model, name, GRID if family_name == "llava" else 24)
    inputs = make_batch([make_prompt(2, seed=4)])
    new = 8
    with reroute.apply(model, config), torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    prompt_length = inputs["input_ids"].shape[1]
    _, embeds, present, _ = reference_stage1(model, inputs, config)
    visual = backbone_for(model).visual_mask(model.config, ids[:, :-1])[0].tolist()
    ((_, _, decisions),) = reference_per_sample(model, inputs, config)
    extended = dict(inputs, input_ids=ids[:, :-1], attention_mask=torch.ones_like(ids[:, :-1]))
    if "mm_token_type_ids" in inputs:
        pad = torch.zeros(1, new - 1, dtype=torch.long)
        extended["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], pad], dim=1)
    captured = decoder_inputs(model, extended)
    full = captured["inputs_embeds"][0].clone()
    full[:prompt_length] = embeds[0]
    text_model = model.model.language_model
    hidden, _ = reference_forward(
        text_model, rotary_positions(captured, 0, ids.shape[1] - 1, 0), full, visual, config,
        decisions=decisions, present=present[0].tolist(), **scoring_of(config),
    )  # fmt: skip
    predicted = model.lm_head(hidden).argmax(-1)
    assert torch.equal(predicted[prompt_length - 1 :], ids[0, prompt_length:])


@pytest.mark.parametrize("name", ["nuwa", "nuwa_reroute"])
def test_batch_equals_samples_alone(family, name):
    family_name, model, make_prompt, make_batch = family
    config = nuwa_config(model, name, GRID if family_name == "llava" else 24)
    prompts, inputs = mixed_batch(make_prompt, make_batch, "right")
    out, trace = routed(model, config, inputs)
    mask = inputs["attention_mask"].bool()
    with reroute.apply(model, config), torch.no_grad():
        batch_ids = model.generate(**mixed_batch(make_prompt, make_batch, "left")[1], max_new_tokens=6, do_sample=False)
        for b, prompt in enumerate(prompts):
            alone_inputs = make_batch([prompt])
            alone = model(**alone_inputs)
            real = torch.nonzero(mask[b]).flatten()
            torch.testing.assert_close(out.logits[b, real], alone.logits[0], atol=ATOL, rtol=0)
            alone_ids = model.generate(**alone_inputs, max_new_tokens=6, do_sample=False)
            assert torch.equal(batch_ids[b, -6:], alone_ids[0, -6:])
    assert not trace[2].routed


def test_nuwa_reroute_with_one_decision_is_nuwa(family):
    family_name, model, make_prompt, make_batch = family
    nuwa = nuwa_config(model, "nuwa", GRID if family_name == "llava" else 24)
    one = dataclasses.replace(nuwa, action="reroute")
    _, inputs = mixed_batch(make_prompt, make_batch)
    a, ta = routed(model, nuwa, inputs)
    b, tb = routed(model, one, inputs)
    assert torch.equal(a.logits, b.logits)
    assert [s.selected for s in ta] == [s.selected for s in tb]


# ----------------------------------------------------------------------------- presets and cost
@pytest.mark.parametrize("tier, n, anchors, keep", [(64, 1, 112, 16), (128, 2, 224, 32), (192, 3, 336, 48)])
@pytest.mark.parametrize("ratios", ["paper", "solved"])
def test_llava_presets_are_the_published_budgets(tier, n, anchors, keep, ratios):
    for name, layers in (("nuwa", (16,)), ("nuwa_reroute", (16, 24))):
        config = reroute.preset(name, tier, model=llava_1_5_7b(), ratios=ratios)
        assert config.decision_layers == layers and config.scorer == "nuwa_llava"
        assert config.action == ("remove" if name == "nuwa" else "reroute")
        assert config.vision_parameters["per_cell"] == n
        assert config.visual_counts_per_layer(576, 32) == [anchors] * 16 + [keep] * 16
        assert (anchors + keep) / 2 == tier == avg_t(config, 32, 576, integer=True)


def test_qwen_presets():
    qwen = qwen2_5_vl_7b()
    assert reroute.preset("nuwa", 64, model=qwen).decision_layers == (15,)
    assert reroute.preset("nuwa_reroute", 64, model=qwen).decision_layers == (15, 22)
    assert reroute.preset("nuwa", 64, model=qwen).scorer == "nuwa_qwen"
    for keep, (fraction, n, stage2) in {0.25: (0.35, 3, 0.42), 0.5: (0.6, 3, 0.66), 0.75: (0.85, 4, 0.70)}.items():
        config = reroute.preset("nuwa", keep * 1000, model=qwen, ratios="paper", num_visual=1000)
        expected = {"keep_fraction": fraction, "per_cell": n, "self_in_denominator": False}
        assert config.vision_parameters == expected and config.keep_ratios == (stage2,)
    # solved: the tier is hit exactly (continuous counts) on 28 layers
    config = reroute.preset("nuwa_reroute", 100, model=qwen, num_visual=1000)
    assert avg_t(config, 28, 1000) == pytest.approx(100, abs=1e-9)
    with pytest.raises(ValueError, match=r"^ratios='paper' has no Nüwa setting for keep 0.3 \(tier 300 of 1000\) on Qwen2.5-VL"):
        reroute.preset("nuwa", 300, model=qwen, ratios="paper", num_visual=1000)
    with pytest.raises(ValueError, match=r"^ratios='paper' has no Nüwa setting for tier 100 on LLaVA: Nüwa publishes tiers 64, 128, 192; "):
        reroute.preset("nuwa", 100, ratios="paper")


def test_nuwa_configs_round_trip_through_json():
    for name in ("nuwa", "nuwa_reroute"):
        config = reroute.preset(name, 64)
        assert RoutingConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    "params, message",
    [
        ({"keep_fraction": 1.5}, "vision stage 'nuwa': keep_fraction=1.5 is not in (0, 1]; pass K / N, e.g. 112 / 576"),
        ({"per_cell": 5}, "vision stage 'nuwa': per_cell=5 is not 1, 2, 3 or 4 (a 2 x 2 cell has 4 tokens)"),
        ({"radius": 3}, "vision stage 'nuwa' has no parameter 'radius': use keep_fraction, per_cell, self_in_denominator"),
        *(
            ({"self_in_denominator": value}, f"vision stage 'nuwa': self_in_denominator={value!r} is not 0, 1, False "
             "or True; pass True for the reference code's merge denominator")
            for value in (2, 0.5, 1.0, "yes")
        ),
    ],
)
def test_vision_params_errors(params, message):
    import re

    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        RoutingConfig(vision_stage="nuwa", vision_params=params)


def test_nuwa_refuses_a_model_it_is_not_defined_for():
    """By what the family's adapter declares: Qwen2-VL declares no Nüwa tower, so the presets refuse it
    (no LLaVA settings borrowed) and so does apply() with a hand-made config."""
    import re

    model = tiny_qwen("qwen2_vl")
    lacks = (
        "Qwen2-VL declares no Nüwa tower kind (Qwen2VLBackbone.nuwa_tower): Nüwa's stage 1 is defined for "
        "LlavaForConditionalGeneration and Qwen2_5_VLForConditionalGeneration"
    )
    for target in (model, model.config):
        with pytest.raises(ValueError, match=f"^{re.escape(lacks)}$"):
            reroute.preset("nuwa", 4, model=target, num_visual=16)
    config = RoutingConfig(action="remove", decision_layers=(3,), keep_ratios=(0.5,), scorer="nuwa_qwen",
                           vision_stage="nuwa", vision_params={"keep_fraction": 0.5, "per_cell": 2})
    message = f"vision stage 'nuwa': {lacks}; use vision_stage=None"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        reroute.apply(model, config)
    assert "forward" not in model.__dict__  # refused before any state changed


@torch.no_grad()
def test_manual_decode_without_positions_continues_from_the_full_prompt(family):
    """A decode loop that passes no position ids (only the cache and the full attention mask) gets
    the same tokens as generate(): positions come from the full prompt length, not layer 0's
    shorter cache."""
    family_name, model, make_prompt, make_batch = family
    if family_name != "llava":  # measured: the stock model fails there too (transformers 5.24 slices no positions)
        pytest.skip("stock Qwen2.5-VL cannot decode without position ids either; generate() passes them")
    config = nuwa_config(model, "nuwa_reroute", GRID)
    inputs = make_batch([make_prompt(1, seed=0)])
    with reroute.apply(model, config) as handle:
        expected = model.generate(**inputs, max_new_tokens=5, do_sample=False)[0, -5:]
        out = model(**inputs, use_cache=True)
        cache, mask = output_cache(out), inputs["attention_mask"]
        assert cache.get_seq_length() < inputs["input_ids"].shape[1]  # layer 0 holds only what entered
        tokens = [int(out.logits[0, -1].argmax())]
        for _ in range(4):
            mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
            step = model(input_ids=torch.tensor([[tokens[-1]]]), attention_mask=mask, **{CACHE_KEYWORD: cache}, use_cache=True)
            tokens.append(int(step.logits[0, -1].argmax()))
        assert handle.trace is not None
    assert tokens == expected.tolist()
