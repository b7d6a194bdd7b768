"""What transformers' own VLM model tests exercise, on a routed model at keep ratio 1.0 (issue 16, item 10).

transformers' `tests/models/{llava,qwen2_5_vl,qwen2_vl}/test_modeling_*.py` run
`ModelTesterMixin` and `GenerationTesterMixin` on tiny models (LLaVA: 2 Llama layers, hidden
32, vocab 99, 16 image tokens at the start of a 23-token prompt, batch 3, image token id 0,
pad id 1). Those test files are not part of the installed package, so this harness builds
the same LLaVA configuration (and the tiny Qwen models of tests/models.py) and runs the
forward and generation checks they make, each comparing the routed model (a decision at
layer 1 keeping every token) with the stock model. What it does not cover is listed in
docs/supported-modes.md.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from tests.helpers.models import FAMILIES
from transformers import LlavaConfig, LlavaForConditionalGeneration

import reroute
from reroute import RoutingConfig
from reroute.backbones import backbone_for
from reroute.runtime.compat import CACHE_KEYWORD

KEEP_ALL = RoutingConfig("reroute", (1,), (1.0,))
NUM_IMAGE_TOKENS = 16  # (8 px / 2 px patches)^2, CLS dropped


def stock_tester_config(attn: str = "eager") -> LlavaConfig:
    """The dimensions of transformers' LlavaVisionText2TextModelTester."""
    text = dict(
        model_type="llama", vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, hidden_act="gelu", max_position_embeddings=512, pad_token_id=1,
    )  # fmt: skip
    vision = dict(
        image_size=8, patch_size=2, num_channels=3, hidden_size=32, projection_dim=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=37,
    )  # fmt: skip
    config = LlavaConfig(
        text_config=text, vision_config=vision, image_token_index=0, projector_hidden_act="gelu",
        vision_feature_select_strategy="default", vision_feature_layer=-1, image_seq_length=NUM_IMAGE_TOKENS,
    )  # fmt: skip
    config._attn_implementation = attn
    return config


def stock_tester_inputs(batch: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 99, (batch, 7 + NUM_IMAGE_TOKENS), generator=g)
    ids[:, :NUM_IMAGE_TOKENS] = 0
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(batch, 3, 8, 8, generator=g),
    }


def _qwen_inputs(family: str, batch: int, seed: int) -> dict:
    """``batch`` prompts of the same length (no padding), one image each."""
    prompts = [FAMILIES[family].make_prompt(1, size=0, seed=seed + b) for b in range(batch)]
    return FAMILIES[family].make_batch(prompts)


def make_inputs(family: str, batch: int = 3, seed: int = 0) -> dict:
    return stock_tester_inputs(batch, seed) if family == "llava" else _qwen_inputs(family, batch, seed)


def _make_model(family: str, attn: str):
    torch.manual_seed(0)
    if family == "llava":
        return LlavaForConditionalGeneration(stock_tester_config(attn)).eval()
    return FAMILIES[family].make_model(attn=attn, num_layers=2)


@pytest.fixture(scope="module", params=[(f, a) for f in ("llava", "qwen2_5_vl", "qwen2_vl") for a in ("eager", "sdpa")],
                ids=lambda p: f"{p[0]}-{p[1]}")  # fmt: skip
def pair(request):
    """The stock model and an identical copy, routed at keep ratio 1.0; the family; the attention."""
    family, attn = request.param
    stock = _make_model(family, attn)
    routed = copy.deepcopy(stock)
    handle = reroute.apply(routed, KEEP_ALL)
    yield stock, routed, family, attn
    handle.restore()


def _visual_ids(model) -> list[int]:
    return list(backbone_for(model).visual_token_ids(model.config))


def _labels(model, inputs):
    ids = inputs["input_ids"]
    visual = backbone_for(model).visual_mask(model.config, ids)
    return ids.masked_fill(visual, -100)


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif a is None or isinstance(a, (int, float, bool)):
        assert a == b


# ----------------------------------------------------------------------------- ModelTesterMixin-style checks
FORWARDS = {
    "logits": {},
    "tuple_outputs": {"return_dict": False, "use_cache": False},
    "labels_loss": {"labels": None},
    "logits_to_keep": {"logits_to_keep": 1},
    "hidden_states": {"output_hidden_states": True},
    "attentions": {"output_attentions": True},
}


@pytest.mark.parametrize("name", list(FORWARDS))
def test_forward_equals_stock(pair, name):
    stock, routed, family, attn = pair
    inputs = make_inputs(family)
    kwargs = dict(FORWARDS[name])
    if "labels" in kwargs:
        kwargs["labels"] = _labels(stock, inputs)
    with torch.no_grad():
        a, b = stock(**inputs, **kwargs), routed(**inputs, **kwargs)
    if isinstance(a, tuple):
        _assert_same(a, b)
        return
    for key in ("loss", "logits", "hidden_states", "attentions"):
        _assert_same(a.get(key), b.get(key))


def test_training_gradients_equal_stock(pair):
    stock, routed, family, _ = pair
    inputs = make_inputs(family)
    labels = _labels(stock, inputs)
    grads = []
    for model in (stock, routed):
        model.zero_grad()
        model(**inputs, labels=labels, use_cache=False).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad()
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=0)


def test_inputs_embeds_equals_stock(pair):
    stock, routed, family, _ = pair
    inputs = make_inputs(family)
    embeds = routed.get_input_embeddings()(inputs["input_ids"])
    call = {k: v for k, v in inputs.items() if k != "input_ids"} | {"inputs_embeds": embeds}
    with torch.no_grad():
        by_embeds = routed(**call).logits
        assert torch.equal(by_embeds, stock(**call).logits)
        if family == "llava":  # Qwen derives other M-RoPE positions without input_ids, stock too
            torch.testing.assert_close(by_embeds, routed(**inputs).logits, atol=1e-6, rtol=0)


def test_batching_equivalence(pair):
    _, routed, family, _ = pair
    inputs = make_inputs(family)
    with torch.no_grad():
        batch = routed(**inputs).logits
        for b in range(3):
            alone = routed(**make_inputs(family, 1, seed=b) if family != "llava" else {k: v[b : b + 1] for k, v in inputs.items()}).logits
            torch.testing.assert_close(alone[0], batch[b], atol=1e-5, rtol=0)


def test_mismatching_num_image_tokens_still_raises(pair):
    stock, routed, family, _ = pair
    inputs = make_inputs(family)
    ids = inputs["input_ids"].clone()
    ids[0, torch.nonzero(backbone_for(stock).visual_mask(stock.config, ids)[0])[0]] = 7  # one image slot too few
    inputs["input_ids"] = ids
    errors = []
    for model in (stock, routed):
        with pytest.raises((RuntimeError, ValueError)) as error:
            model(**inputs)
        errors.append((type(error.value), str(error.value)))
    assert errors[0] == errors[1]


def test_save_pretrained_round_trip(pair, tmp_path):
    stock, routed, family, _ = pair
    routed.save_pretrained(tmp_path)
    loaded = type(stock).from_pretrained(tmp_path, attn_implementation=stock.config._attn_implementation).eval()
    inputs = make_inputs(family)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, stock(**inputs).logits)


# ----------------------------------------------------------------------------- GenerationTesterMixin-style checks
GENERATE = {
    "greedy": dict(do_sample=False),
    "greedy_dict": dict(do_sample=False, return_dict_in_generate=True, output_scores=True, output_logits=True,
                        output_hidden_states=True, output_attentions=True),  # fmt: skip
    "greedy_no_cache": dict(do_sample=False, use_cache=False),
    "sample": dict(do_sample=True, top_k=0, num_return_sequences=2),
    "beam_search": dict(do_sample=False, num_beams=2, num_return_sequences=2),
    "beam_search_dict": dict(do_sample=False, num_beams=2, return_dict_in_generate=True, output_scores=True),
    "beam_sample": dict(do_sample=True, num_beams=2),
    "prompt_lookup": dict(do_sample=False, prompt_lookup_num_tokens=2),
    "static_cache": dict(do_sample=False, cache_implementation="static", return_dict_in_generate=True, output_scores=True,
                         output_hidden_states=True),
    "static_cache_beams": dict(do_sample=False, num_beams=2, cache_implementation="static"),
}


@pytest.mark.parametrize("name", list(GENERATE))
def test_generate_equals_stock(pair, name):
    stock, routed, family, attn = pair
    kwargs = dict(GENERATE[name], max_new_tokens=5, min_new_tokens=5, suppress_tokens=_visual_ids(stock))
    batch = 1 if name == "prompt_lookup" else 3
    inputs = make_inputs(family, batch)
    results = []
    for model in (stock, routed):
        torch.manual_seed(0)
        with torch.no_grad():
            results.append(model.generate(**inputs, **kwargs))
    a, b = results
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
        return
    for key in ("sequences", "scores", "logits", "hidden_states", "attentions", "sequences_scores"):
        _assert_same(a.get(key), b.get(key))


def test_assisted_decoding_matches_greedy(pair):
    stock, routed, family, _ = pair
    inputs = make_inputs(family, 1)
    assistant = copy.deepcopy(stock)
    options = dict(do_sample=False, max_new_tokens=6, min_new_tokens=6, suppress_tokens=_visual_ids(stock))
    with torch.no_grad():
        expected = stock.generate(**inputs, **options)
        assert torch.equal(routed.generate(**inputs, assistant_model=assistant, **options), expected)


@pytest.mark.parametrize("cache", [None, "static"])
def test_generate_from_inputs_embeds(pair, cache):
    stock, routed, family, _ = pair
    inputs = make_inputs(family)
    embeds = stock.get_input_embeddings()(inputs["input_ids"])
    call = {k: v for k, v in inputs.items() if k != "input_ids"} | {"inputs_embeds": embeds}
    options = dict(do_sample=False, max_new_tokens=5, min_new_tokens=5, cache_implementation=cache)
    with torch.no_grad():
        assert torch.equal(routed.generate(**call, **options), stock.generate(**call, **options))


def test_generate_continue_from_past_key_values(pair):
    stock, routed, family, _ = pair
    inputs = make_inputs(family)
    options = dict(do_sample=False, max_new_tokens=3, min_new_tokens=3, return_dict_in_generate=True,
                   suppress_tokens=_visual_ids(stock))  # fmt: skip
    outs = []
    for model in (stock, routed):
        with torch.no_grad():
            first = model.generate(**inputs, **options)
            ids = first.sequences
            more = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            if "mm_token_type_ids" in inputs:
                grown = ids.shape[1] - inputs["input_ids"].shape[1]
                more["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros(3, grown, dtype=torch.long)], 1)
            again = model.generate(**more, **{CACHE_KEYWORD: first.past_key_values}, **options)
        outs.append(again.sequences)
    assert torch.equal(outs[0], outs[1])


def test_left_padding_compatibility(pair):
    """transformers' check: the last token's logits do not change when the batch is left-padded."""
    _, routed, family, _ = pair
    inputs = make_inputs(family)
    pad = torch.full((3, 4), 1)
    padded = dict(
        inputs,
        input_ids=torch.cat([pad, inputs["input_ids"]], dim=1),
        attention_mask=torch.cat([torch.zeros_like(pad), inputs["attention_mask"]], dim=1),
    )
    if "mm_token_type_ids" in inputs:
        padded["mm_token_type_ids"] = torch.cat([torch.zeros_like(pad), inputs["mm_token_type_ids"]], dim=1)
    with torch.no_grad():
        plain = routed(**inputs).logits[:, -1]
        left = routed(**padded).logits[:, -1]
    torch.testing.assert_close(left, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs, mode",
    [
        (dict(cache_implementation="offloaded_static"), "cache_implementation='offloaded_static'"),
        (dict(cache_implementation="quantized"), "cache_implementation='quantized'"),
        (dict(cache_implementation="paged"), "cache_implementation='paged'"),  # continuous batching
        (dict(prefill_chunk_size=4), "prefill_chunk_size"),
    ],
)
def test_compilable_and_other_caches_are_refused(pair, kwargs, mode):
    _, routed, family, _ = pair
    with pytest.raises(ValueError, match=f"^{re.escape(mode)} is not supported on a routed model: "):
        routed.generate(**make_inputs(family), max_new_tokens=2, **kwargs)
