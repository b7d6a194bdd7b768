"""The seeded random scorer and its presets (docs/semantics.md §20) through the real engine."""

from __future__ import annotations

import pytest
import torch

import reroute
from reroute import RoutingConfig
from reroute.methods.random_tokens.scorer import draw
from tests.helpers.harness import routed
from tests.helpers.models import FAMILIES
from tests.helpers.scorer_invariants import (
    assert_batch_equals_alone,
    assert_engine_equals_reference,
    assert_generate_equals_reference,
    assert_keep_all_is_stock,
    tiny_model,
    top_k,
)

PRESETS = ("random", "reroute_vs_random")
CONFIGS = {
    "remove": RoutingConfig("remove", (2, 4), (0.5, 0.25), scorer="random", scorer_params={"seed": 7}),
    "reroute": RoutingConfig("reroute", (2, 4), (0.3, 0.6), scorer="random", scorer_params={"seed": 7}),
}


def select(ctx):
    """The i-th candidate draws the i-th uniform of (seed, decision, prompt length)."""
    u = draw(int(ctx.config.scorer_parameters["seed"]), ctx.decision, ctx.length, len(ctx.candidates))
    return top_k(dict(zip(ctx.candidates, u.tolist())), ctx.candidates, ctx.keep)


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


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_keep_all_is_stock(family):
    config = RoutingConfig("reroute", (2, 4), (1.0, 1.0), scorer="random")
    assert_keep_all_is_stock(FAMILIES[family], tiny_model(FAMILIES[family]), config)


def test_seeds_change_the_draw_and_each_seed_reproduces_it():
    fam = FAMILIES["llava"]
    model = tiny_model(fam)
    inputs = fam.make_batch([fam.make_prompt(2, seed=1)])
    picks = []
    for seed in (0, 1, 0):
        config = RoutingConfig("remove", (2,), (0.25,), scorer="random", scorer_params={"seed": seed})
        picks.append(routed(model, config, inputs)[1].samples[0].selected)
    assert picks[0] == picks[2] and picks[0] != picks[1]


def test_the_draw_is_uniform_over_the_visual_tokens():
    """Over 4000 seeds, each of 16 tokens is among the 4 kept about a quarter of the time (1000 expected)."""
    counts = torch.zeros(16)
    for seed in range(4000):
        counts[draw(seed, 0, 40, 16).topk(4).indices] += 1
    assert counts.sum() == 16000
    assert bool(((counts > 900) & (counts < 1100)).all()), counts.tolist()


def test_a_seed_must_be_whole():
    with pytest.raises(ValueError, match=r"^scorer 'random' takes a whole seed >= 0, got 1\.5$"):
        RoutingConfig("remove", (2,), (0.5,), scorer="random", scorer_params={"seed": 1.5})


@pytest.mark.parametrize("tier", [192, 128, 64])
def test_the_pair_runs_at_one_budget(tier):
    shape = reroute.backbones.released_shapes()["llava-1.5-7b"].config()
    removal, rerouted = (reroute.cost(reroute.preset(n, tier=tier, model=shape), shape) for n in PRESETS)
    assert removal.avg_t == rerouted.avg_t and removal.kv_cache_bytes == rerouted.kv_cache_bytes
    assert removal.flops_paper == rerouted.flops_paper and abs(removal.avg_t_continuous - tier) < 1e-6
