"""docs/semantics.md §8: `apply` and `RoutingConfig` refuse what they cannot do, with a one-line message naming the fix."""

from __future__ import annotations

import re

import pytest
import torch
from tests.helpers.models import FAMILIES, tiny_llava

import reroute
from reroute import RoutingConfig
from reroute.runtime.compat import CACHE_KEYWORD, output_cache


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(action="drop"), "action must be one of ('remove', 'reroute'), got 'drop'"),
        (dict(execution="fast"), "execution must be one of ('stagewise', 'per_layer'), got 'fast'"),
        (
            dict(action="remove", execution="per_layer"),
            "execution='per_layer' applies to action='reroute' only; use execution='stagewise' with 'remove'",
        ),
        (dict(decision_layers=(), keep_ratios=()), "decision_layers is empty: give at least one decision layer, e.g. (3,)"),
        (dict(decision_layers=(5, 3), keep_ratios=(0.5, 0.5)), "decision_layers must be strictly increasing, got (5, 3)"),
        (
            dict(decision_layers=(0,), keep_ratios=(0.5,)),
            "decision layer 0 is not allowed: layer 0 always sees every token; use decision layers >= 1",
        ),
        (
            dict(decision_layers=(2, 4), keep_ratios=(0.5,)),
            "keep_ratios has 1 values but decision_layers has 2: give one ratio per decision layer",
        ),
        (dict(keep_ratios=(0.0,)), "keep ratio 0.0 is outside (0, 1]: each keep ratio must be > 0 and <= 1"),
        (dict(keep_ratios=(1.5,)), "keep ratio 1.5 is outside (0, 1]: each keep ratio must be > 0 and <= 1"),
        (
            dict(action="remove", decision_layers=(2, 4), keep_ratios=(0.2, 0.4)),
            "keep_ratios grow from 0.2 to 0.4 at decision layer 4: removed tokens cannot come back; "
            "make the ratios non-increasing or use action='reroute'",
        ),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        RoutingConfig(**kwargs)


def test_growing_ratios_are_fine_for_reroute():
    config = RoutingConfig("reroute", (2, 4), (0.2, 0.4))
    assert config.keep_counts(576) == (115, 230)


def test_config_is_frozen_and_hashable():
    config = RoutingConfig("reroute", [2, 4], [0.5, 0.25])
    assert config.decision_layers == (2, 4) and hash(config) == hash(RoutingConfig("reroute", (2, 4), (0.5, 0.25)))
    with pytest.raises(AttributeError):
        config.action = "remove"


def test_unsupported_model_class():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2))
    message = (
        "reroute does not support LlamaForCausalLM; load one of InternVLForConditionalGeneration, "
        "LlavaForConditionalGeneration, LlavaNextForConditionalGeneration, LlavaOnevisionForConditionalGeneration, "
        "Mistral3ForConditionalGeneration, Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration, "
        "Qwen3VLForConditionalGeneration"
    )
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        reroute.apply(model, RoutingConfig())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_decision_layer_outside_decoder(family):
    model = FAMILIES[family].make_model()
    name = type(model.model.language_model).__name__
    message = f"decision layer 6 is outside the decoder: {name} has 6 layers (valid decision layers are 1..5)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        reroute.apply(model, RoutingConfig("reroute", (2, 6), (0.5, 0.5)))


def test_unsupported_attention_implementation():
    model = tiny_llava()
    model.model.language_model.config._attn_implementation = "flash_attention_2"
    message = (
        "attention implementation 'flash_attention_2' is not supported; load the model with "
        "attn_implementation='sdpa' (default) or 'eager'"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        reroute.apply(model, RoutingConfig())


def test_not_a_config():
    with pytest.raises(TypeError, match="^config must be a reroute.RoutingConfig, got dict$"):
        reroute.apply(tiny_llava(), {"action": "reroute"})


def test_double_apply_is_refused_and_restore_allows_again():
    model = tiny_llava()
    handle = reroute.apply(model, RoutingConfig())
    with pytest.raises(ValueError, match=r"^this model is already routed; call handle.restore\(\) first$"):
        reroute.apply(model, RoutingConfig())
    handle.restore()
    reroute.apply(model, RoutingConfig()).restore()


def test_prompt_without_visual_tokens_runs_unrouted():
    model = tiny_llava()
    ids = torch.tensor([[1, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        vanilla = model(input_ids=ids).logits
        with reroute.apply(model, RoutingConfig("reroute", (1,), (0.1,))) as handle:
            out = model(input_ids=ids).logits
    assert torch.equal(out, vanilla)
    assert not handle.trace[0].routed and handle.trace[0].num_visual == 0
    assert handle.trace.avg_T == 0.0


def test_continuing_a_routed_cache_with_a_new_image_is_refused():
    from tests.helpers.models import llava_batch, llava_prompt

    model = tiny_llava()
    inputs = llava_batch([llava_prompt(1)])
    with reroute.apply(model, RoutingConfig()), torch.no_grad():
        cache = output_cache(model(**inputs, use_cache=True))
        more = dict(inputs, attention_mask=torch.ones(1, 2 * inputs["input_ids"].shape[1], dtype=torch.long))
        message = "new visual tokens cannot continue a routed cache; start a new generate() call for a new image"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            model(**more, **{CACHE_KEYWORD: cache}, use_cache=True)


def test_a_cache_filled_without_routing_is_refused():
    from tests.helpers.models import llava_batch, llava_prompt

    model = tiny_llava()
    inputs = llava_batch([llava_prompt(1)])
    with torch.no_grad():
        cache = output_cache(model(**inputs, use_cache=True))
        step = {"input_ids": torch.tensor([[7]]), "attention_mask": torch.ones(1, inputs["input_ids"].shape[1] + 1, dtype=torch.long)}
        message = "reroute cannot continue a KV cache it did not fill; run the prompt through the routed model first"
        with reroute.apply(model, RoutingConfig()), pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            model(**step, **{CACHE_KEYWORD: cache}, use_cache=True)
