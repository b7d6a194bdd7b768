"""A routed static cache (docs/semantics.md §17): generate(cache_implementation="static") on a routed model
generates what the default DynamicCache generates, and each layer holds its routed count plus the decode room."""

from __future__ import annotations

import re

import pytest
import torch
from tests.helpers.batches import mixed_prompts, single
from tests.helpers.models import FAMILIES, llava_batch, llava_prompt, qwen_batch, qwen_prompt, tiny_llava, tiny_qwen
from transformers import StaticCache

import reroute
from reroute import RoutingConfig
from reroute.runtime.compat import CACHE_KEYWORD
from reroute.runtime.static_cache import RoutedStaticCache

CONFIGS = {
    "remove": RoutingConfig("remove", (1, 3, 4), (0.5, 0.25, 0.1)),
    "reroute": RoutingConfig("reroute", (1, 3, 4), (0.3, 0.5, 0.2)),
    "reroute_per_layer": RoutingConfig("reroute", (1, 3, 4), (0.3, 0.5, 0.2), execution="per_layer"),
}
NEW = 5
GREEDY = dict(do_sample=False, max_new_tokens=NEW, min_new_tokens=NEW)
_LLAVA = FAMILIES["llava"]


def _batch(family, side: str):
    """Two prompts with images (2 and 1, different lengths) padded on ``side``: a routed batch whose compact
    stages are narrower than the prompt (an image-less sample would keep every position active)."""
    return family.make_batch(mixed_prompts(family)[:2], side)


def _generate_both(model, config, inputs, **extra):
    with reroute.apply(model, config) as handle, torch.no_grad():
        dynamic = model.generate(**inputs, **GREEDY, **extra)
        static = model.generate(**inputs, cache_implementation="static", return_dict_in_generate=True, **GREEDY, **extra)
        trace = handle.trace
    return dynamic, static, trace


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("side", ["left", "right"])
def test_static_generate_equals_dynamic_on_every_family(family, model, name, side):
    dynamic, static, trace = _generate_both(model, CONFIGS[name], _batch(family, side))
    assert torch.equal(static.sequences, dynamic)
    cache = static.cache
    assert type(cache) is RoutedStaticCache
    # each layer holds its routed prompt entries plus the room generate() reserved (max_new_tokens - 1)
    assert [layer.max_cache_len for layer in cache.layers] == [n + NEW - 1 for n in trace.cache_lengths]
    assert min(trace.cache_lengths) < max(trace.cache_lengths)  # the batch really routes


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_static_generate_under_both_attentions_and_keep_one(attn):
    model = tiny_llava(attn)
    inputs = _batch_llava()
    for config in (CONFIGS["reroute"], RoutingConfig("reroute", (1, 3), (1.0, 1.0))):
        dynamic, static, _ = _generate_both(model, config, inputs)
        assert torch.equal(static.sequences, dynamic)
    stock = model.generate(**inputs, **GREEDY)  # keep 1.0 is the stock model (restored above)
    assert torch.equal(static.sequences, stock)


def _batch_llava():
    return llava_batch([llava_prompt(2, seed=1), llava_prompt(1, text_before=6, seed=2)])


def test_static_beam_search_and_sampling_equal_dynamic():
    model = tiny_llava()
    config = CONFIGS["reroute"]
    with reroute.apply(model, config), torch.no_grad():
        for extra, inputs in (
            (dict(num_beams=3), _batch_llava()),
            (dict(do_sample=True, num_return_sequences=2), _batch_llava()),
        ):
            torch.manual_seed(0)
            dynamic = model.generate(**inputs, **{**GREEDY, **extra})
            torch.manual_seed(0)
            static = model.generate(**inputs, cache_implementation="static", **{**GREEDY, **extra})
            assert torch.equal(static, dynamic), extra


def test_memory_per_layer_follows_the_routed_counts():
    """Bytes per layer = 2 (keys, values) x B x kv_heads x (routed entries + room) x head_dim x element size;
    the stock StaticCache holds the full prompt in every layer."""
    model = tiny_llava()
    inputs = _batch_llava()
    with reroute.apply(model, CONFIGS["remove"]) as handle, torch.no_grad():
        out = model.generate(**inputs, cache_implementation="static", return_dict_in_generate=True, **GREEDY)
        lengths = handle.trace.cache_lengths
    stock = model.generate(**inputs, cache_implementation="static", return_dict_in_generate=True, **GREEDY).cache
    text = model.config.text_config
    batch, heads, head_dim = inputs["input_ids"].shape[0], text.num_key_value_heads, text.head_dim
    per_entry = 2 * batch * heads * head_dim * 4  # float32
    assert out.cache.layer_bytes() == [per_entry * (n + NEW - 1) for n in lengths]
    stock_bytes = sum(layer.keys.numel() * 4 + layer.values.numel() * 4 for layer in stock.layers)
    assert stock_bytes == per_entry * (inputs["input_ids"].shape[1] + NEW - 1) * len(lengths)
    assert sum(out.cache.layer_bytes()) < stock_bytes


def test_a_forward_on_a_routed_static_cache_equals_the_dynamic_cache():
    """By hand, outside generate(): prefill, then decode steps with the growing 2-D mask."""
    model = tiny_llava()
    inputs = _batch_llava()
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with reroute.apply(model, CONFIGS["reroute"]), torch.no_grad():
        logits = {}
        for kind in ("dynamic", "static"):
            cache = RoutedStaticCache(model.config, max_cache_len=ids.shape[1] + 3) if kind == "static" else None
            out = model(**inputs, **{CACHE_KEYWORD: cache}, use_cache=True)
            steps, cache, step_mask = [out.logits[:, -1]], out.cache, mask
            for _ in range(3):
                token = steps[-1].argmax(-1, keepdim=True)
                step_mask = torch.cat([step_mask, torch.ones_like(token)], dim=1)
                out = model(input_ids=token, attention_mask=step_mask, **{CACHE_KEYWORD: cache}, use_cache=True)
                steps.append(out.logits[:, -1])
            logits[kind] = torch.stack(steps)
    torch.testing.assert_close(logits["static"], logits["dynamic"], atol=1e-5, rtol=0)


def _message(kind: str) -> str:
    return (
        f"{kind} is not supported on a routed model: its layers' caches have different lengths, which a plain "
        "DynamicCache or a RoutedStaticCache holds; pass one of them (or none), or call handle.restore() first"
    )


def test_a_stock_static_cache_and_offloading_are_refused():
    model = tiny_llava()
    inputs = llava_batch([llava_prompt(1)])
    with reroute.apply(model, CONFIGS["remove"]), torch.no_grad():
        stock = StaticCache(config=model.config.text_config, max_cache_len=64)
        with pytest.raises(ValueError, match=f"^{re.escape(_message('StaticCache'))}$"):
            model(**inputs, **{CACHE_KEYWORD: stock}, use_cache=True)
        offloaded = RoutedStaticCache(model.config, max_cache_len=64, offloading=True)
        with pytest.raises(ValueError, match=f"^{re.escape(_message('RoutedStaticCache with offloading'))}$"):
            model.generate(**inputs, **{CACHE_KEYWORD: offloaded}, **GREEDY)
        message = (
            "cache_implementation='offloaded_static' is not supported on a routed model: its layers' caches have "
            "different lengths, which the default DynamicCache and cache_implementation='static' hold; use one of "
            "them, or call handle.restore() first"
        )
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            model.generate(**inputs, cache_implementation="offloaded_static", **GREEDY)


def test_refusals_of_a_routed_static_cache():
    model = tiny_llava(attn="eager")
    inputs = single(_LLAVA)
    length = inputs["input_ids"].shape[1]
    with reroute.apply(model, CONFIGS["remove"]) as handle, torch.no_grad():
        cache = RoutedStaticCache(model.config, max_cache_len=length + 4)
        model(**inputs, **{CACHE_KEYWORD: cache}, use_cache=True)
        trace = handle.trace
        message = "new visual tokens cannot continue a routed cache; start a new generate() call for a new image"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            model(**inputs, **{CACHE_KEYWORD: cache}, use_cache=True)
        message = (
            "output_attentions=True is not supported with a routed static cache; drop cache_implementation='static' "
            "to get attention weights from the default DynamicCache"
        )
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            model.generate(**inputs, cache_implementation="static", output_attentions=True,
                           return_dict_in_generate=True, **GREEDY)  # fmt: skip
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            model(**inputs, **{CACHE_KEYWORD: RoutedStaticCache(model.config, max_cache_len=64)}, output_attentions=True)
        too_short = RoutedStaticCache(model.config, max_cache_len=4)
        message = f"the prompt has {length} tokens but the static cache holds 4; build it with a larger max_cache_len"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            model(**inputs, **{CACHE_KEYWORD: too_short}, use_cache=True)
        assert handle.trace is trace  # every refusal came before a prefill ran


@pytest.mark.parametrize("name", ["nuwa", "nuwa_reroute"])
def test_static_generate_with_a_vision_stage_equals_dynamic(name):
    """Nüwa drops visual tokens before layer 0: every layer's cache is compact, and the positions the
    cache reports stay the full prompt's (docs/semantics.md §17)."""
    model = tiny_qwen("qwen2_5_vl")
    config = reroute.preset(name, tier=64 * 24 / 576 * 2, model=model, num_visual=24)
    prompts = [qwen_prompt(image_grids=((1, 8, 12),), seed=4), qwen_prompt(image_grids=((1, 8, 8),), text_before=6, seed=5)]
    for side in ("left", "right"):
        dynamic, static, trace = _generate_both(model, config, qwen_batch(prompts, side))
        assert torch.equal(static.sequences, dynamic)
        assert max(trace.cache_lengths) < static.sequences.shape[1] - NEW  # layer 0 is compact too


def test_static_scores_and_hidden_states_equal_dynamic():
    model = tiny_llava()
    inputs = _batch_llava()
    options = dict(GREEDY, return_dict_in_generate=True, output_logits=True, output_hidden_states=True)
    with reroute.apply(model, CONFIGS["reroute"]), torch.no_grad():
        dynamic = model.generate(**inputs, **options)
        static = model.generate(**inputs, cache_implementation="static", **options)
    for a, b in zip(static.logits, dynamic.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    for step_a, step_b in zip(static.hidden_states, dynamic.hidden_states):
        assert len(step_a) == len(step_b)
        for a, b in zip(step_a, step_b):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
