"""DART and its rerouted counterpart through the real engine (docs/semantics.md §20).

The reference takes each decision from its own full-length states: the pivots' keys are what the
stock layer before the decision writes into a KV cache (not our projection code), the states are
the decoder's final norm of the states entering the decision layer, and the selection is
`dart_select` (which equals the official code, test_dart_official.py).
"""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import DynamicCache

import reroute
from reroute import RoutingConfig
from reroute.methods.dart.select import dart_select
from tests.helpers.models import FAMILIES
from tests.helpers.scorer_invariants import (
    assert_batch_equals_alone,
    assert_engine_equals_reference,
    assert_generate_equals_reference,
    assert_keep_all_is_stock,
    tiny_model,
)

PRESETS = ("dart", "reroute_vs_dart")
CONFIGS = {
    "remove": RoutingConfig("remove", (2, 4), (0.5, 0.25), scorer="dart"),
    "reroute": RoutingConfig("reroute", (2, 4), (0.3, 0.6), scorer="dart", scorer_params={"image_pivots": 2}),
}


def cached_keys(text_model, layer_index: int, states: torch.Tensor, tables) -> torch.Tensor:
    """``(L, heads * head_dim)``: the keys the stock layer caches for ``states``, each key head
    repeated for its query heads (the official code reads them after ``repeat_kv``)."""
    cache = DynamicCache(config=text_model.config)
    layer = text_model.layers[layer_index]
    length = states.shape[0]
    # transformers 5.24 names the layer's cache argument ``cache``; earlier releases ``past_key_values``
    name = "cache" if "cache" in inspect.signature(type(layer).forward).parameters else "past_key_values"
    layer(states[None], attention_mask=None, position_embeddings=tables, use_cache=True, cache_position=torch.arange(length),
          **{name: cache})  # fmt: skip
    keys = cache.layers[layer_index].keys  # (1, KV, L, hd), rotated
    keys = keys.repeat_interleave(layer.self_attn.num_key_value_groups, dim=1)
    return keys.permute(0, 2, 1, 3).reshape(length, -1)


def select(ctx):
    params = ctx.config.scorer_parameters
    keys = cached_keys(ctx.text_model, ctx.layer - 1, ctx.states[ctx.layer - 1], ctx.tables)
    states = ctx.text_model.norm(ctx.states[ctx.layer])
    candidates = torch.zeros(ctx.length, dtype=torch.bool)
    candidates[ctx.candidates] = True
    text = torch.zeros(ctx.length, dtype=torch.bool)
    text[[j for j in range(max(ctx.candidates) + 1, ctx.length) if j not in ctx.visual]] = True
    chosen = dart_select(
        torch.norm(keys, p=1, dim=-1), states, candidates, text, ctx.keep,
        int(params["image_pivots"]), int(params["text_pivots"]),
    )  # fmt: skip
    return torch.nonzero(chosen).flatten().tolist()


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("action", sorted(CONFIGS))
def test_engine_equals_reference(family, action):
    assert_engine_equals_reference(FAMILIES[family], tiny_model(FAMILIES[family]), CONFIGS[action], select)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("name", PRESETS)
def test_presets_batch_equals_alone_and_generate_equals_reference(family, name):
    fam = FAMILIES[family]
    model = tiny_model(fam)
    config = reroute.preset(name, tier=128, model=model)
    assert_batch_equals_alone(fam, model, config)
    assert_generate_equals_reference(fam, model, config)


@pytest.mark.parametrize("family", ["llava", "qwen3_vl"])
def test_keep_all_is_stock(family):
    config = RoutingConfig("reroute", (2, 4), (1.0, 1.0), scorer="dart")
    assert_keep_all_is_stock(FAMILIES[family], tiny_model(FAMILIES[family]), config)


@pytest.mark.parametrize("tier", [192, 128, 64])
def test_the_pair_runs_at_one_budget(tier):
    shape = reroute.backbones.released_shapes()["llava-1.5-7b"].config()
    removal, rerouted = (reroute.cost(reroute.preset(n, tier=tier, model=shape), shape) for n in PRESETS)
    assert removal.avg_t == rerouted.avg_t and removal.kv_cache_bytes == rerouted.kv_cache_bytes
    assert removal.flops_paper == rerouted.flops_paper and abs(removal.avg_t_continuous - tier) < 1e-6


def test_the_published_budgets_are_the_official_counts():
    """--max_num_trunction 192 / 128 / 64 with 4 + 4 pivots retain 196 / 132 / 68 of 576 tokens from layer 2."""
    for tier, kept in ((192, 196), (128, 132), (64, 68)):
        config = reroute.preset("dart", tier=tier, ratios="paper")
        assert config.decision_layers == (2,) and config.keep_counts(576) == (kept,)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"image_pivots": 1.5}, r"^scorer 'dart': image_pivots must be a whole number >= 0, got 1\.5$"),
        ({"image_pivots": 0, "text_pivots": 0},
         r"^scorer 'dart' needs at least one pivot: set image_pivots or text_pivots above 0$"),
    ],
)  # fmt: skip
def test_parameters_are_checked(params, message):
    with pytest.raises(ValueError, match=message):
        RoutingConfig("remove", (2,), (0.5,), scorer="dart", scorer_params=params)
