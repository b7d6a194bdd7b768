"""The newer families beyond the invariant suite: refusals with their reasons, `reroute cost --model`
on a config folder, and the released shapes' visual token counts against the processors' own arithmetic.

(LLaVA-NeXT, LLaVA-OneVision, InternVL and Qwen3-VL run every invariant test through ``FAMILIES``.)
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from tests.helpers.harness import decoder_inputs, routed
from tests.helpers.models import FAMILIES

import reroute
from reroute import RoutingConfig
from reroute.backbones import backbone_for, released_shapes, supported_model_classes
from reroute.cli import main

SHAPES = released_shapes()


# ----------------------------------------------------------------------------- refused and unsupported families
@pytest.mark.parametrize(
    "name, reason",
    [
        ("Gemma3ForConditionalGeneration", "its decoder has sliding-window attention layers, which the routed loop cannot run exactly"),
        ("Gemma3nForConditionalGeneration", "its decoder has sliding-window attention layers, which the routed loop cannot run exactly"),
        ("Qwen3_5ForConditionalGeneration", "its decoder has linear-attention (recurrent state) layers, which a token cannot skip and rejoin exactly"),
    ],
)  # fmt: skip
def test_refused_families_say_why(name, reason):
    import transformers

    model = object.__new__(getattr(transformers, name))  # the class is all apply() looks at before refusing
    message = f"reroute does not support {name}: {reason}"
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        reroute.apply(model, RoutingConfig())


@pytest.mark.parametrize("name", ["Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration"])
def test_families_without_an_adapter_are_refused(name):
    import transformers

    model = object.__new__(getattr(transformers, name))
    message = f"reroute does not support {name}; load one of {', '.join(supported_model_classes())}"
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        reroute.apply(model, RoutingConfig())


# ----------------------------------------------------------------------------- Qwen3-VL DeepStack
def test_deepstack_reaches_only_the_tokens_that_ran_the_layer():
    """A decision at layer 1 (between the two injections): the kept tokens receive layer 1's feature, the
    removed ones do not (their final states are their layer-0 outputs plus layer 0's feature only)."""
    family = FAMILIES["qwen3_vl"]
    model = family.make_model(num_layers=4)
    inputs = family.make_batch([family.make_prompt(2)])
    captured = decoder_inputs(model, inputs)
    assert len(captured["deepstack_visual_embeds"]) == 2  # injected after layers 0 and 1
    out, trace = routed(model, RoutingConfig("remove", (1,), (0.25,)), inputs, output_hidden_states=True)
    visual = torch.nonzero(captured["visual_pos_masks"][0]).flatten().tolist()
    kept = set(trace[0].selected[0])
    removed = [j for j in visual if j not in kept]
    assert kept and removed
    # hidden_states[1] is layer 0's output before its injection (as stock records it); removed tokens keep
    # that plus layer 0's feature, and never layer 1's, through the later layers (the last entry is normed)
    layer0 = out.hidden_states[1][0]
    features = torch.zeros_like(captured["inputs_embeds"][0])
    features[visual] = captured["deepstack_visual_embeds"][0]
    for i in (2, 3):
        torch.testing.assert_close(out.hidden_states[i][0, removed], (layer0 + features)[removed], atol=0, rtol=0)


# ----------------------------------------------------------------------------- reroute cost --model
def test_cost_reads_a_local_config_folder(tmp_path, capsys):
    SHAPES["qwen3-vl-8b"].config().save_pretrained(tmp_path)
    assert main(["cost", "--model", str(tmp_path), "--num-visual", "196"]) == 0
    from_folder = capsys.readouterr().out.split("\n", 1)[1]
    assert main(["cost", "--model", "qwen3-vl-8b"]) == 0  # 196 visual tokens by default for this shape
    named = capsys.readouterr().out
    assert named.startswith("qwen3-vl-8b: 36 decoder layers, hidden 4096, MLP 12288, 32 heads / 8 kv heads x 128; 196 visual")
    assert named.split("\n", 1)[1] == from_folder


def test_cost_model_without_config_is_a_user_error(tmp_path, capsys):
    assert main(["cost", "--model", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"reroute cost: --model '{tmp_path}': the folder has no readable config.json (")
    assert err.endswith(
        f"); pass one of {', '.join(sorted(SHAPES))}, a folder holding a config.json, or a hub id this machine can reach"
    )
    assert "\n" not in err


# ----------------------------------------------------------------------------- released shapes
def test_visual_tokens_per_image_follow_the_processors():
    from transformers import LlavaNextProcessor, LlavaOnevisionProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize  # the PIL backend: no torchvision

    next_ = object.__new__(LlavaNextProcessor)  # only the counting arithmetic is used: no tokenizer needed
    config = SHAPES["llava-next-7b"].config()
    next_.image_processor = SimpleNamespace(image_grid_pinpoints=config.image_grid_pinpoints)
    next_.patch_size, next_.num_additional_image_tokens = 14, 0
    assert next_._get_number_of_features(672, 672, 336, 336) == SHAPES["llava-next-7b"].visual_tokens

    onevision = object.__new__(LlavaOnevisionProcessor)
    onevision.image_processor = SimpleNamespace(image_grid_pinpoints=[[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)])
    onevision.num_image_tokens, onevision.vision_aspect_ratio = (384 // 14) ** 2, "anyres_max_9"
    assert onevision._get_number_of_features(384, 384, 384, 384) == SHAPES["llava-onevision-7b"].visual_tokens

    for name, patch in (("qwen2.5-vl-7b", 14), ("qwen3-vl-8b", 16)):
        height, width = smart_resize(448, 448, factor=2 * patch)
        assert (height // patch) * (width // patch) // 4 == SHAPES[name].visual_tokens
    internvl = SHAPES["internvl3-8b"].config()
    tile = (internvl.vision_config.image_size[0] // internvl.vision_config.patch_size[0]) * internvl.downsample_ratio
    assert int(tile) ** 2 == internvl.image_seq_length == SHAPES["internvl3-8b"].visual_tokens


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_named_shapes_belong_to_the_adapter_that_declares_them(name):
    """Each released shape's config builds the class of the adapter declaring it, and its config finds that adapter."""
    from transformers import AutoModelForImageTextToText

    from reroute.backbones import BACKBONES, backbone_for_config

    (declaring,) = [b for b in BACKBONES if SHAPES[name] in vars(b).get("released", ())]
    config = SHAPES[name].config()
    cls = AutoModelForImageTextToText._model_mapping[type(config)]
    assert cls.__name__ in declaring.model_classes
    assert type(backbone_for_config(config)) is declaring


# ----------------------------------------------------------------------------- decoders inside supported families
def _llava_next_with(decoder: dict):
    from tests.helpers.models_more import PINPOINTS, _build
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    config = LlavaNextConfig(
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=4, image_size=16, patch_size=8, projection_dim=32,
        ),
        text_config=dict(
            vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, **decoder,
        ),
        image_token_id=60, image_grid_pinpoints=PINPOINTS,
    )
    return _build(LlavaNextForConditionalGeneration, config, "sdpa", 0)


def test_mistral_decoder_with_a_sliding_window_is_refused():
    model = _llava_next_with(dict(model_type="mistral", sliding_window=4096))
    message = (
        "the mistral decoder uses a sliding window of 4096 tokens, which the routed loop cannot run exactly; "
        "load the model with text_config.sliding_window=None (the same model for prompts shorter than 4096 tokens)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        reroute.apply(model, RoutingConfig("remove", (1,), (0.5,)))
    assert "forward" not in model.model.language_model.__dict__  # refused before any change
    reroute.apply(_llava_next_with(dict(model_type="mistral", sliding_window=None)), RoutingConfig("remove", (1,), (0.5,)))


@pytest.mark.parametrize("config", [RoutingConfig("remove", (1, 3), (0.5, 0.25)), RoutingConfig("reroute", (1, 3), (0.3, 0.5))])
def test_internvl_with_a_qwen3_decoder_equals_reference(config):
    """InternVL3.5's decoder is Qwen3 (QK-norm): scoring and the routed loop still equal the reference."""
    from tests.helpers.harness import reference_logits, visual_mask
    from tests.helpers.models_more import internvl_batch, internvl_prompt, tiny_internvl

    model = tiny_internvl(decoder="qwen3", num_layers=4)
    assert hasattr(model.model.language_model.layers[0].self_attn, "q_norm")
    prompts = [internvl_prompt(2, size=0, seed=1), internvl_prompt(1, size=1, seed=2, text_before=6)]
    inputs = internvl_batch(prompts, "left")
    with torch.no_grad():
        stock = model(**inputs).logits
    with reroute.apply(model, RoutingConfig("remove", (1,), (1.0,))), torch.no_grad():
        assert torch.equal(model(**inputs).logits, stock)
    out, _ = routed(model, config, inputs)
    expected = reference_logits(model, inputs, visual_mask(model, inputs), config)
    mask = inputs["attention_mask"].bool()
    for b, (ref, _) in enumerate(expected):
        torch.testing.assert_close(out.logits[b, torch.nonzero(mask[b]).flatten()], ref, atol=2e-5, rtol=0)
