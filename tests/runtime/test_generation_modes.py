"""Every way transformers drives a routed model is exact or refused (issue 16; docs/supported-modes.md).

"Exact" is checked against the slow full-length reference (tests/reference.py) by teacher
forcing: the reference, given the prompt's decisions, predicts every generated token. Refusals
match their whole one-line message and leave the model as it was.
"""

from __future__ import annotations

import copy
import io
import pickle
import re
import warnings

import pytest
import torch
from tests.helpers.harness import decoder_inputs, sample_injections, visual_mask
from tests.helpers.batches import mixed_batch, single
from tests.helpers.models import LLAVA_IMAGE_TOKEN, llava_batch, llava_prompt, tiny_llava
from tests.helpers.reference import reference_forward
from tests.helpers.reference_decode import assert_reference_predicts, rope_positions

import reroute
from reroute import RoutingConfig
from reroute.runtime import compat
from reroute.apply import UNKNOWN_POSITIONS
from reroute.backbones import backbone_for
from reroute.runtime.compat import CACHE_KEYWORD

CONFIGS = {
    "remove_pdrop": RoutingConfig("remove", (1, 3, 4), (0.5, 0.25, 0.1)),
    "reroute_stagewise": RoutingConfig("reroute", (1, 3, 4), (0.3, 0.5, 0.2)),
}
GREEDY = dict(do_sample=False, max_new_tokens=8, min_new_tokens=8)


# ----------------------------------------------------------------------------- 1. use_cache=False
@pytest.mark.parametrize("name", list(CONFIGS))
def test_generate_without_cache_equals_reference_and_cache(family, model, name):
    config = CONFIGS[name]
    inputs = single(family)
    with reroute.apply(model, config), torch.no_grad():
        cached = model.generate(**inputs, **GREEDY)
        uncached = model.generate(**inputs, use_cache=False, **GREEDY)
    assert torch.equal(uncached, cached)
    assert_reference_predicts(model, config, inputs, uncached)


def test_generate_without_cache_batch_and_scores(family, model):
    """Left-padded batch with different image counts; the scores of every step agree too."""
    inputs = mixed_batch(family)
    options = dict(GREEDY, return_dict_in_generate=True, output_logits=True)
    with reroute.apply(model, CONFIGS["reroute_stagewise"]), torch.no_grad():
        cached = model.generate(**inputs, **options)
        uncached = model.generate(**inputs, use_cache=False, **options)
    assert torch.equal(uncached.sequences, cached.sequences)
    for a, b in zip(uncached.logits, cached.logits):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0)


# ----------------------------------------------------------------------------- 2. continuation
def test_continuation_with_more_text_equals_reference(family, model):
    """Multi-turn chat: continue generate() from the returned cache with more text, no new image."""
    config = CONFIGS["reroute_stagewise"]
    inputs = single(family)
    with reroute.apply(model, config), torch.no_grad():
        first = model.generate(**inputs, return_dict_in_generate=True, **GREEDY)
        more = torch.cat([first.sequences, torch.tensor([[7, 8, 9, 10]])], dim=1)
        follow_up = {"input_ids": more, "attention_mask": torch.ones_like(more)}
        if "mm_token_type_ids" in inputs:
            follow_up["mm_token_type_ids"] = torch.cat(
                [inputs["mm_token_type_ids"], torch.zeros(1, more.shape[1] - inputs["input_ids"].shape[1], dtype=torch.long)], 1
            )
        ids = model.generate(**follow_up, **{CACHE_KEYWORD: first.past_key_values}, **GREEDY)
    assert torch.equal(ids[:, : more.shape[1]], more)
    assert_reference_predicts(model, config, inputs, ids, given=range(first.sequences.shape[1], more.shape[1]))


@pytest.mark.skipif(
    int(compat.TRANSFORMERS_VERSION.split(".")[0]) < 5,
    reason="transformers 4.x's generate() drops the pixel values of a call that continues a cache: no model sees the new image",
)
def test_continuation_with_a_new_image_is_refused(family, model):
    inputs = single(family, num_images=1)
    with reroute.apply(model, CONFIGS["reroute_stagewise"]), torch.no_grad():
        first = model.generate(**inputs, return_dict_in_generate=True, **GREEDY)
        second = family.make_batch([family.make_prompt(1, size=0, seed=5)])
        # the whole conversation so far, then a second image and its question
        ids = torch.cat([first.sequences, second["input_ids"]], dim=1)
        follow_up = {k: v for k, v in second.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        follow_up.update(input_ids=ids, attention_mask=torch.ones_like(ids))
        if "mm_token_type_ids" in second:
            follow_up["mm_token_type_ids"] = torch.cat(
                [torch.zeros(1, first.sequences.shape[1], dtype=torch.long), second["mm_token_type_ids"]], 1
            )
        message = "new visual tokens cannot continue a routed cache; start a new generate() call for a new image"
        lengths = [layer.keys.shape[-2] for layer in first.past_key_values.layers]
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            model.generate(**follow_up, **{CACHE_KEYWORD: first.past_key_values}, **GREEDY)
        assert [layer.keys.shape[-2] for layer in first.past_key_values.layers] == lengths  # the cache is untouched


# ----------------------------------------------------------------------------- 3. assisted / lookup
def _count_verification_steps(model):
    """Forward pre-hook counting decoder calls that verify several tokens at once after the prefill."""
    calls = []

    def hook(module, args, kwargs):
        calls.append(kwargs["inputs_embeds"].shape[1])

    return calls, model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("mode", ["assistant", "prompt_lookup"])
def test_assisted_and_prompt_lookup_equal_greedy_and_reference(family, model, mode, monkeypatch):
    from transformers import DynamicCache

    config = CONFIGS["remove_pdrop"]
    inputs = single(family)
    extra = {"assistant_model": family.make_model(seed=1)} if mode == "assistant" else {"prompt_lookup_num_tokens": 3}
    # EOS suppressed rather than min_new_tokens: transformers 4.57 refuses any minimum length with assisted decoding
    # (the newer families' tiny models have no EOS token: nothing to suppress there)
    eos = model.generation_config.eos_token_id
    options = dict(do_sample=False, max_new_tokens=12, suppress_tokens=[] if eos is None else [eos])
    cropped = []
    crop = DynamicCache.crop
    monkeypatch.setattr(DynamicCache, "crop", lambda self, n: cropped.append(n) or crop(self, n))
    with reroute.apply(model, config), torch.no_grad():
        greedy = model.generate(**inputs, **options)
        calls, hook = _count_verification_steps(model)
        try:
            assisted = model.generate(**inputs, **extra, **options)
        finally:
            hook.remove()
    assert torch.equal(assisted, greedy)
    assert_reference_predicts(model, config, inputs, assisted)
    if mode == "assistant":  # candidates were verified in one forward, and rejected ones cropped from every layer
        assert any(n > 1 for n in calls[1:])
        if not compat.CROP_TAKES_LENGTH:  # before 5.24 the routed cache crops through its own instance method
            assert any(n < 0 for n in cropped)


# ----------------------------------------------------------------------------- 4. inputs_embeds
def _embeds_inputs(model, inputs):
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    return {k: v for k, v in inputs.items() if k != "input_ids"} | {"inputs_embeds": embeds}


def test_inputs_embeds_with_pixels_routes_like_input_ids(family, model):
    config = CONFIGS["reroute_stagewise"]
    inputs = single(family)
    # Without input_ids the stock Qwen models derive other M-RoPE positions: give both calls the same ones.
    inputs["position_ids"] = decoder_inputs(model, inputs).get("position_ids")
    with reroute.apply(model, config) as handle, torch.no_grad():
        by_ids = model(**inputs).logits
        trace_ids = handle.trace
        by_embeds = model(**_embeds_inputs(model, inputs)).logits
        trace_embeds = handle.trace
    assert trace_embeds == trace_ids and trace_ids[0].routed and trace_embeds.note == ""
    torch.testing.assert_close(by_embeds, by_ids, atol=1e-6, rtol=0)


def test_generate_from_inputs_embeds_with_pixels_is_routed():
    model = tiny_llava()
    inputs = llava_batch([llava_prompt(2)])
    config = CONFIGS["reroute_stagewise"]
    with reroute.apply(model, config) as handle, torch.no_grad():
        by_ids = model.generate(**inputs, **GREEDY)
        by_embeds = model.generate(**_embeds_inputs(model, inputs), **GREEDY)
        assert handle.trace[0].routed
    assert torch.equal(by_embeds, by_ids[:, inputs["input_ids"].shape[1] :])


def test_merged_inputs_embeds_run_unrouted_with_one_warning_and_a_trace_note():
    model = tiny_llava()
    inputs = llava_batch([llava_prompt(1)])
    merged = decoder_inputs(model, inputs)["inputs_embeds"]  # features already in place: positions unknown
    with torch.no_grad():
        stock = model(inputs_embeds=merged, attention_mask=inputs["attention_mask"]).logits
    with reroute.apply(model, RoutingConfig("reroute", (1,), (0.2,))) as handle, torch.no_grad():
        with pytest.warns(UserWarning, match=f"^{re.escape('reroute: ' + UNKNOWN_POSITIONS)}$"):
            out = model(inputs_embeds=merged, attention_mask=inputs["attention_mask"]).logits
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per handle
            model(inputs_embeds=merged, attention_mask=inputs["attention_mask"])
        assert handle.trace.note == UNKNOWN_POSITIONS and not handle.trace[0].routed
        assert "note: visual positions unknown" in handle.trace.summary()
    assert torch.equal(out, stock)


# ----------------------------------------------------------------------------- 5. prompt ends in a visual token
@pytest.mark.parametrize("name", list(CONFIGS))
def test_prompt_ending_in_a_visual_token_keeps_its_query(name):
    """The last prompt token is the query of every decision and always takes part; when it is visual it
    is not a candidate (N_vis counts the others), so no later decision loses its query."""
    model = tiny_llava()
    config = RoutingConfig(CONFIGS[name].action, (1, 3, 4), (0.25, 0.2, 0.1))
    ids = [1, 20, 21, 22] + [LLAVA_IMAGE_TOKEN] * 16
    inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
              "pixel_values": torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))}  # fmt: skip
    last = len(ids) - 1
    with reroute.apply(model, config) as handle, torch.no_grad():
        generated = model.generate(**inputs, **GREEDY)
        trace = handle.trace
    assert trace[0].num_visual == 15
    assert all(last not in chosen and len(chosen) == k for chosen, k in zip(trace[0].selected, config.keep_counts(15)))
    assert trace.cache_lengths[-1] == 4 + config.keep_counts(15)[-1] + 1  # text, kept visual, the query
    assert_reference_predicts(model, config, inputs, generated)


# ----------------------------------------------------------------------------- 6. refused modes
# what holds per-layer lengths: the routed static cache needs 5.24's StaticLayer (docs/semantics.md §17)
if compat.ROUTED_STATIC_CACHE:
    CACHES_HELD = "the default DynamicCache and cache_implementation='static' hold; use one of them"
    CACHE_OBJECTS_HELD = "a plain DynamicCache or a RoutedStaticCache holds; pass one of them (or none)"
else:
    CACHES_HELD = "only the default DynamicCache holds; drop cache_implementation"
    CACHE_OBJECTS_HELD = "only a plain DynamicCache holds; pass a DynamicCache (or none)"

REFUSALS = {
    "offloaded": (
        dict(cache_implementation="offloaded"),
        "cache_implementation='offloaded' is not supported on a routed model: its layers' caches have different "
        f"lengths, which {CACHES_HELD}, or call handle.restore() first",
    ),
    "contrastive_search": (
        dict(penalty_alpha=0.6, top_k=4),
        "contrastive search is not supported on a routed model: transformers runs it as Hub code that reroute has not "
        "checked against its per-layer caches; use greedy, sampling, beam search or assisted decoding, or call "
        "handle.restore() first",
    ),
    "group_beam_search": (
        dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0),
        "group beam search is not supported on a routed model: transformers runs it as Hub code that reroute has not "
        "checked against its per-layer caches; use greedy, sampling, beam search or assisted decoding, or call "
        "handle.restore() first",
    ),
    "custom_generate_repo": (
        dict(custom_generate="someone/their-decoding"),
        "custom_generate='someone/their-decoding' is not supported on a routed model: its decoding loop is Hub code "
        "that reroute has not checked against its per-layer caches; use a built-in generation mode, or call "
        "handle.restore() first",
    ),
    "chunked_prefill": (
        dict(prefill_chunk_size=4),
        "prefill_chunk_size is not supported on a routed model: a decision needs the whole prompt in one forward; "
        "drop prefill_chunk_size, or call handle.restore() first",
    ),
}


@pytest.mark.parametrize("mode", list(REFUSALS))
def test_refused_generate_modes_leave_the_model_as_it_was(family, model, mode):
    kwargs, message = REFUSALS[mode]
    inputs = single(family)
    with reroute.apply(model, CONFIGS["remove_pdrop"]) as handle, torch.no_grad():
        before = model.generate(**inputs, **GREEDY)
        trace = handle.trace
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            model.generate(**inputs, **kwargs, **GREEDY)
        assert handle.trace is trace  # refused before anything ran
        assert torch.equal(model.generate(**inputs, **GREEDY), before)


def test_a_static_cache_object_is_refused_in_forward_and_generate():
    from transformers import StaticCache

    model = tiny_llava()
    inputs = llava_batch([llava_prompt(1)])
    message = (
        "StaticCache is not supported on a routed model: its layers' caches have different lengths, which "
        f"{CACHE_OBJECTS_HELD}, or call handle.restore() first"
    )
    with reroute.apply(model, CONFIGS["remove_pdrop"]), torch.no_grad():
        for call in (model, lambda **kw: model.generate(**kw, **GREEDY)):
            cache = StaticCache(config=model.config.text_config, max_cache_len=64)
            with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
                call(**inputs, **{CACHE_KEYWORD: cache}, use_cache=True)


def test_packed_rows_are_refused():
    model = tiny_llava()
    a, b = llava_prompt(1, seed=1), llava_prompt(1, seed=2)
    packed = llava_batch([llava_prompt(1)])
    packed["input_ids"] = torch.tensor([a.ids + b.ids])
    packed["attention_mask"] = torch.ones_like(packed["input_ids"])
    packed["pixel_values"] = torch.cat([a.images, b.images])
    packed["position_ids"] = torch.cat([torch.arange(len(a.ids)), torch.arange(len(b.ids))])[None]
    message = (
        "packed sequences (position_ids that restart inside a row) are not supported on a routed model: each row must "
        "be one prompt; pad the batch instead, or call handle.restore() first"
    )
    with reroute.apply(model, CONFIGS["remove_pdrop"]), torch.no_grad(), pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        model(**packed)


# ----------------------------------------------------------------------------- 7. copies, foreign wrappers, inner model
def test_deepcopy_of_a_routed_model_is_plain_and_runs_its_own_weights(family, model):
    inputs = single(family)
    with torch.no_grad():
        stock = model(**inputs).logits
    with reroute.apply(model, CONFIGS["reroute_stagewise"]), torch.no_grad():
        routed = model(**inputs).logits
        twin = copy.deepcopy(model)
        assert torch.equal(twin(**inputs).logits, stock)  # plain
        with torch.no_grad():
            twin.lm_head.weight.mul_(2.0)
        assert torch.allclose(twin(**inputs).logits, 2 * stock, atol=1e-5)  # its own weights
        assert torch.equal(model(**inputs).logits, routed)  # the original is still routed
    with reroute.apply(twin, CONFIGS["reroute_stagewise"]), torch.no_grad():
        assert torch.allclose(twin(**inputs).logits, 2 * routed, atol=1e-5)  # and the copy can be routed


def test_deepcopy_of_the_inner_model_is_plain(family, model):
    inputs = single(family)
    with torch.no_grad():
        stock = model.model(**inputs).last_hidden_state
        with reroute.apply(model, CONFIGS["reroute_stagewise"]):
            routed = model.model(**inputs).last_hidden_state
            inner = copy.deepcopy(model.model)
            assert torch.equal(inner(**inputs).last_hidden_state, stock)
            assert not torch.equal(routed, stock)


class _CountingHook:
    """What accelerate's device hooks do: an instance attribute wrapping the module's forward."""

    def __init__(self, module):
        self.calls = 0
        self.inner = module.forward
        module.forward = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def test_a_wrapper_installed_before_apply_is_called_and_comes_back():
    model = tiny_llava()
    inputs = llava_batch([llava_prompt(1)])
    config = CONFIGS["reroute_stagewise"]
    with torch.no_grad():
        stock = model(**inputs).logits
        routed = _routed_logits(tiny_llava(), config, inputs)
        theirs = _CountingHook(model.model)
        with reroute.apply(model, config):
            assert torch.equal(model(**inputs).logits, routed)
            assert theirs.calls == 1
        assert model.model.__dict__["forward"] is theirs
        assert torch.equal(model(**inputs).logits, stock) and theirs.calls == 2


def test_a_wrapper_installed_after_apply_survives_restore():
    model = tiny_llava()
    inputs = llava_batch([llava_prompt(1)])
    with torch.no_grad():
        stock = model(**inputs).logits
        handle = reroute.apply(model, CONFIGS["reroute_stagewise"])
        theirs = _CountingHook(model.model)
        handle.restore()
        assert model.model.__dict__["forward"] is theirs
        assert torch.equal(model(**inputs).logits, stock) and theirs.calls == 1


def test_accelerate_hook_survives_apply_and_restore():
    hooks = pytest.importorskip("accelerate.hooks")
    ModelHook, add_hook_to_module, remove_hook_from_module = hooks.ModelHook, hooks.add_hook_to_module, hooks.remove_hook_from_module

    class Count(ModelHook):
        calls = 0

        def pre_forward(self, module, *args, **kwargs):
            Count.calls += 1
            return args, kwargs

    model = tiny_llava()
    inputs = llava_batch([llava_prompt(1)])
    config = CONFIGS["remove_pdrop"]
    with torch.no_grad():
        stock = model(**inputs).logits
        routed = _routed_logits(tiny_llava(), config, inputs)
        add_hook_to_module(model.model, Count())
        hooked = model.model.__dict__["forward"]
        with reroute.apply(model, config):
            assert torch.equal(model(**inputs).logits, routed) and Count.calls == 1
        assert model.model.__dict__["forward"] is hooked  # their hook is back, and still runs
        assert torch.equal(model(**inputs).logits, stock) and Count.calls == 2
        remove_hook_from_module(model.model)
        assert torch.equal(model(**inputs).logits, stock) and Count.calls == 2


def test_a_patched_decoder_forward_is_refused():
    model = tiny_llava()
    _CountingHook(model.model.language_model)
    message = (
        "the forward of LlamaModel is already patched by another library; apply reroute before that library wraps it, "
        "or remove its wrapper first"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        reroute.apply(model, RoutingConfig())
    assert "generate" not in model.__dict__ and "forward" not in model.model.__dict__


def test_the_inner_model_call_routes_too(family, model):
    inputs = single(family)
    with reroute.apply(model, CONFIGS["reroute_stagewise"]) as handle, torch.no_grad():
        logits = model(**inputs).logits
        trace = handle.trace
        handle.trace = None
        hidden = model.model(**inputs).last_hidden_state
        assert handle.trace == trace
    torch.testing.assert_close(model.lm_head(hidden), logits, atol=1e-6, rtol=0)


def _routed_logits(model, config, inputs):
    with reroute.apply(model, config), torch.no_grad():
        return model(**inputs).logits


# ----------------------------------------------------------------------------- 11. pickling
def test_torch_save_of_a_routed_model_loads_as_the_plain_model():
    model = tiny_llava()
    inputs = llava_batch([llava_prompt(1)])
    stock = tiny_llava()
    with torch.no_grad():
        expected = stock(**inputs).logits
    with reroute.apply(model, CONFIGS["reroute_stagewise"]):
        buffer = io.BytesIO()
        torch.save(model, buffer)
        restored = pickle.loads(pickle.dumps(model))
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, expected)
        assert torch.equal(restored(**inputs).logits, expected)
    reroute.apply(loaded, CONFIGS["reroute_stagewise"]).restore()  # and it can be routed again


def test_pickling_after_a_forward_fails_as_on_the_stock_model():
    """transformers installs output-capturing hooks (local functions) on the first forward: the stock model
    cannot be pickled after that either. A routed model pickles exactly when the stock model does."""
    inputs = llava_batch([llava_prompt(1)])
    stock, routed = tiny_llava(), tiny_llava()
    with torch.no_grad():
        stock(**inputs)
        with reroute.apply(routed, CONFIGS["reroute_stagewise"]):
            routed(**inputs)
            routed_error = _pickling_error(routed)
    # transformers 5.x installs those hooks; 4.57 does not, and both models pickle there
    assert routed_error == _pickling_error(stock)


def _pickling_error(model) -> str | None:
    try:
        pickle.dumps(model)
    except AttributeError as error:
        assert "install_output_capuring_hook" in str(error)
        return str(error)
    return None


# ----------------------------------------------------------------------------- 9. hidden states and attentions
@pytest.mark.parametrize("name", list(CONFIGS))
def test_hidden_states_and_attentions_equal_the_reference(family, name):
    """Full length at every layer; a token that did not take part in a layer keeps its state through it,
    and its attention row and column there are 0."""
    model = family.make_model(attn="eager")
    config = CONFIGS[name]
    inputs = single(family)
    with reroute.apply(model, config) as handle, torch.no_grad():
        out = model(**inputs, output_hidden_states=True, output_attentions=True)
        trace = handle.trace
    length = inputs["input_ids"].shape[1]
    visual = visual_mask(model, inputs)[0].tolist()
    captured = decoder_inputs(model, inputs)
    text_model = model.model.language_model
    states, weights = [], []
    hook = [a.self_attn.register_forward_hook(lambda m, i, o: weights.append(o[1][0])) for a in text_model.layers]
    try:
        final, decisions = reference_forward(
            text_model, rope_positions(captured, length), captured["inputs_embeds"][0], visual, config, states=states,
            injections=sample_injections(captured, 0, 0, length),
        )
    finally:
        for h in hook:
            h.remove()
    assert len(out.hidden_states) == len(text_model.layers) + 1 and len(out.attentions) == len(text_model.layers)
    torch.testing.assert_close(out.hidden_states[0][0], captured["inputs_embeds"][0], atol=0, rtol=0)
    for i, state in enumerate(states[:-1]):
        torch.testing.assert_close(out.hidden_states[i + 1][0], state, atol=2e-5, rtol=0)
    torch.testing.assert_close(out.hidden_states[-1][0], final, atol=2e-5, rtol=0)
    for i, (ours, ref) in enumerate(zip(out.attentions, weights)):
        stage = config.stage_of_layer(i)
        active = torch.ones(length, dtype=torch.bool)
        if stage >= 0:
            active = ~torch.tensor(visual) | torch.zeros(length, dtype=torch.bool).index_fill(0, torch.tensor(decisions[stage]), True)
        assert ours.shape == (1, ref.shape[0], length, length)
        pair = active[:, None] & active[None, :]
        torch.testing.assert_close(ours[0][:, pair], ref[:, pair], atol=2e-5, rtol=0)
        assert not ours[0][:, ~pair].any()
    assert list(trace[0].selected) == [tuple(d) for d in decisions]


def test_generate_returns_hidden_states_and_attentions_in_stock_shapes(family):
    model = family.make_model(attn="eager")
    inputs = mixed_batch(family)
    options = dict(GREEDY, return_dict_in_generate=True, output_hidden_states=True, output_attentions=True)
    # without a cache the stock model re-reads every token id: a generated image token id would break it
    options["suppress_tokens"] = list(backbone_for(model).visual_token_ids(model.config))
    with torch.no_grad():
        stock = model.generate(**inputs, **options)
        stock_uncached = model.generate(**inputs, use_cache=False, **options)
        with reroute.apply(model, CONFIGS["remove_pdrop"]):
            routed = model.generate(**inputs, **options)
            uncached = model.generate(**inputs, use_cache=False, **options)

    def shapes(steps):
        return [[t.shape for t in step] for step in steps]

    for got, expected in ((routed, stock), (uncached, stock_uncached)):
        assert shapes(got.hidden_states) == shapes(expected.hidden_states)
        assert shapes(got.attentions) == shapes(expected.attentions)
    # the last decode step: every layer's hidden state of the new token agrees with the no-cache run's last row
    for cached_state, full_state in zip(routed.hidden_states[-1], uncached.hidden_states[-1]):
        torch.testing.assert_close(cached_state[:, -1], full_state[:, -1], atol=2e-5, rtol=0)
    for cached_rows, full_rows in zip(routed.attentions[-1], uncached.attentions[-1]):
        torch.testing.assert_close(cached_rows[:, :, -1], full_rows[:, :, -1], atol=2e-5, rtol=0)
