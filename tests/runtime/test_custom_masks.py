"""Custom 4-D attention masks on a routed model (docs/semantics.md §18).

A ``(batch, 1, q, kv)`` mask built from a padded 2-D mask (as transformers' test_custom_4d_attention_mask
builds its masks: 1 where seen, then 0 / the dtype's minimum, or the boolean form) routes exactly as that
2-D mask: the same logits, trace and per-layer caches in prefill, the same logits in decode steps over the
routed cache. A mask that is not one padded prompt per row (transformers' shared-prefix mask, packed rows,
additive biases) is refused in one line where the call routes something, and taken as it is where the call
routes nothing (then every layer takes the stock mask, as stock).
"""

from __future__ import annotations

import re

import pytest
import torch
from tests.helpers.batches import mixed_batch
from tests.helpers.harness import decoder_inputs
from tests.helpers.models import llava_batch, llava_prompt, tiny_llava

import reroute
from reroute import RoutingConfig
from reroute.apply import CUSTOM_DECODE_MASK, CUSTOM_MASK
from reroute.runtime.compat import CACHE_KEYWORD, output_cache

CONFIGS = {
    "remove_pdrop": RoutingConfig("remove", (1, 3, 4), (0.5, 0.25, 0.1)),
    "reroute_stagewise": RoutingConfig("reroute", (1, 3, 4), (0.3, 0.5, 0.2)),
    "reroute_per_layer": RoutingConfig("reroute", (1, 3, 4), (0.3, 0.5, 0.2), execution="per_layer"),
}
MIN = torch.finfo(torch.float32).min


def four_d(padding: torch.Tensor, num_queries: int, form: str) -> torch.Tensor:
    """``(B, 1, q, kv)``: causal over the padding of each row, for the last ``q`` of ``kv`` positions."""
    num_keys = padding.shape[1]
    query = torch.arange(num_queries)[:, None] + (num_keys - num_queries)
    seen = (torch.arange(num_keys)[None, :] <= query)[None] & padding.bool()[:, None, :]
    if form == "bool":
        return seen[:, None]
    return seen[:, None].eq(0).float() * MIN  # transformers' inversion: 0 where seen, the minimum elsewhere


def _with_positions(family, model, inputs: dict) -> dict:
    """Qwen-VL families compute M-RoPE positions from a 2-D mask: give them the stock positions explicitly
    (as transformers' test does), so their stock forward takes a 4-D mask too."""
    if not family.name.startswith("qwen"):
        return inputs
    return {**inputs, "position_ids": decoder_inputs(model, inputs)["position_ids"]}


def _run(model, config, inputs: dict, mask_of, steps: int = 3):
    """Prefill with ``mask_of(padding, q)``, then ``steps`` greedy decode steps over the returned cache."""
    padding = inputs["attention_mask"]
    with reroute.apply(model, config) as handle, torch.no_grad():
        out = model(**{**inputs, "attention_mask": mask_of(padding, padding.shape[1])})
        trace, logits = handle.trace, [out.logits]
        cache = output_cache(out)
        lengths = [layer.keys.shape[-2] for layer in cache.layers]
        positions = inputs.get("position_ids")
        for step in range(steps):
            token = logits[-1][:, -1].argmax(-1, keepdim=True)
            padding = torch.cat([padding, torch.ones_like(padding[:, :1])], dim=1)
            call = {"input_ids": token, "attention_mask": mask_of(padding, 1), CACHE_KEYWORD: cache}
            if positions is not None:  # a text token after the prompt: one past its largest position, on every axis
                call["position_ids"] = positions.amax(dim=-1, keepdim=True) + 1 + step
            out = model(**call)
            logits.append(out.logits)
    return logits, trace, lengths


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("side", ["left", "right"])
def test_4d_mask_routes_as_the_2d_mask_it_was_built_from(family, model, name, side):
    inputs = _with_positions(family, model, mixed_batch(family, side))
    config = CONFIGS[name]
    expected, trace, lengths = _run(model, config, inputs, lambda padding, q: padding)
    first = trace.samples[0]
    assert first.visual_per_layer[-1] < first.num_visual  # routed: visual tokens left the last layers
    for form in ("additive", "bool"):
        got, got_trace, got_lengths = _run(model, config, inputs, lambda padding, q: four_d(padding, q, form))
        assert got_trace == trace and got_lengths == lengths
        for a, b in zip(got, expected):
            assert torch.equal(a, b)


def test_stock_takes_the_same_4d_mask():
    """The masks above are what stock takes: on the stock model they give the 2-D mask's logits on real tokens."""
    model = tiny_llava()
    inputs = llava_batch([llava_prompt(1), llava_prompt(2, seed=1)])
    padding = inputs["attention_mask"]
    with torch.no_grad():
        two_d = model(**inputs).logits
        four = model(**{**inputs, "attention_mask": four_d(padding, padding.shape[1], "additive")}).logits
    assert torch.equal(four[padding.bool()], two_d[padding.bool()])


def test_generate_with_a_4d_mask_answers_as_stock():
    """generate() takes 2-D masks only; the routed model gives stock's own refusal."""
    model = tiny_llava()
    inputs = llava_batch([llava_prompt(1)])
    inputs["attention_mask"] = four_d(inputs["attention_mask"], inputs["attention_mask"].shape[1], "additive")
    with pytest.raises(ValueError) as stock:
        model.generate(**inputs, max_new_tokens=2)
    with reroute.apply(model, CONFIGS["reroute_stagewise"]), pytest.raises(ValueError) as routed:
        model.generate(**inputs, max_new_tokens=2)
    assert str(routed.value) == str(stock.value)


def _shared_prefix(prefix: list[int], endings: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """transformers' shared-prefix layout: one row, the prefix then several one-token endings that see the
    prefix but not each other; ``(input_ids, mask (1, 1, n, n) additive, position_ids)``."""
    n = len(prefix) + len(endings)
    seen = torch.ones(n, n).tril()
    for i in range(len(prefix), n):
        seen[i, len(prefix) : i] = 0
    ids = torch.tensor([prefix + endings])
    positions = torch.tensor([list(range(len(prefix))) + [len(prefix)] * len(endings)])
    return ids, seen.eq(0).float()[None, None] * MIN, positions


def test_shared_prefix_mask_without_images_equals_stock():
    """Nothing to route (no image): the mask is taken as it is, as transformers' test_custom_4d_attention_mask does."""
    model = tiny_llava()
    ids, mask, positions = _shared_prefix([1, 10, 11, 12], [13, 14, 15])
    n = ids.shape[1]
    # then one decode step after the last ending: it sees the prefix, that ending and itself
    seen = torch.zeros(1, 1, 1, n + 1, dtype=torch.bool)
    seen[..., :4] = seen[..., n - 1 :] = True

    def run():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions)
        step = model(
            input_ids=torch.tensor([[20]]), attention_mask=seen.eq(0).float() * MIN, position_ids=torch.tensor([[5]]),
            **{CACHE_KEYWORD: output_cache(out)},
        )
        return out.logits, step.logits

    with torch.no_grad():
        stock = run()
        with reroute.apply(model, CONFIGS["reroute_stagewise"]):
            routed = run()
    assert torch.equal(routed[0], stock[0]) and torch.equal(routed[1], stock[1])


def _refused(model, **call):
    with reroute.apply(model, CONFIGS["reroute_stagewise"]), torch.no_grad():
        with pytest.raises(ValueError, match=f"^{re.escape(CUSTOM_MASK)}$"):
            model(**call)


def test_masks_that_are_not_one_padded_prompt_per_row_are_refused_where_they_route():
    model = tiny_llava()
    prompt = llava_prompt(1)
    inputs = llava_batch([prompt])
    length = inputs["input_ids"].shape[1]
    causal = four_d(inputs["attention_mask"], length, "bool")
    with torch.no_grad():
        stock = model(**inputs).logits

    # shared prefix: the last two tokens do not see each other
    tree = causal.clone()
    tree[0, 0, -1, -2] = False
    _refused(model, **{**inputs, "attention_mask": tree})
    # packed rows: two prompts in one row, each causal over itself only
    packed = causal.clone()
    packed[0, 0, length // 2 :, : length // 2] = False
    _refused(model, **{**inputs, "attention_mask": packed})
    # an additive bias that is neither 0 nor the minimum
    biased = four_d(inputs["attention_mask"], length, "additive")
    biased[0, 0, -1, 0] = -1.0
    _refused(model, **{**inputs, "attention_mask": biased})
    # one mask per head
    _refused(model, **{**inputs, "attention_mask": causal.expand(-1, 2, -1, -1)})

    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, stock)  # restored, untouched


def test_a_mask_of_another_rank_is_refused():
    model = tiny_llava()
    inputs = llava_batch([llava_prompt(1)])
    message = (
        "reroute needs the 2-D padding attention_mask (batch, length) that processors return, or a 4-D mask "
        "(batch, 1, queries, keys)"
    )
    inputs["attention_mask"] = inputs["attention_mask"][:, None]  # (batch, 1, length)
    with reroute.apply(model, CONFIGS["reroute_stagewise"]), torch.no_grad():
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            model(**inputs)


def test_a_decode_mask_that_hides_prompt_tokens_the_prefill_saw_is_refused():
    """The compact layers' caches hold the keys the routed prefill saw; a decode step whose 4-D mask hides one
    of them (stock would honour it) cannot be gathered there, so it is refused in one line."""
    model = tiny_llava()
    inputs = llava_batch([llava_prompt(1), llava_prompt(2, seed=1)])
    padding = inputs["attention_mask"]
    with reroute.apply(model, CONFIGS["reroute_stagewise"]), torch.no_grad():
        cache = output_cache(model(**inputs))
        padding = torch.cat([padding, torch.ones_like(padding[:, :1])], dim=1)
        hiding = four_d(padding, 1, "bool").clone()
        hiding[1, 0, 0, 0] = False  # the second row's first prompt token (a real one: it is the longer prompt)
        step = {"input_ids": torch.tensor([[5], [6]]), CACHE_KEYWORD: cache}
        with pytest.raises(ValueError, match=f"^{re.escape(CUSTOM_DECODE_MASK)}$"):
            model(**step, attention_mask=hiding)
        model(**step, attention_mask=four_d(padding, 1, "bool"))  # the prefill's padding runs
