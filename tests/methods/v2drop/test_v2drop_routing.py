"""V2Drop and its rerouted counterpart through the real engine (docs/semantics.md §20).

The reference scores each candidate by the change of its state across the last layer that ran it
(looked up in the reference's own per-layer states and active sets): the layer before the decision
for a token that took part in it, an earlier one for a token ``reroute`` deferred.
"""

from __future__ import annotations

import pytest

import reroute
from reroute import RoutingConfig
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

PRESETS = ("v2drop", "reroute_vs_v2drop")
CONFIGS = {
    "remove": RoutingConfig("remove", (2, 4), (0.5, 0.25), scorer="v2drop"),
    "reroute": RoutingConfig("reroute", (2, 3, 5), (0.3, 0.5, 0.4), scorer="v2drop"),
}


def select(ctx):
    active = [set(a) for a in ctx.active]
    scores = {}
    for t in ctx.candidates:
        j = max(j for j in range(ctx.layer) if t in active[j])  # the last layer that ran the token
        scores[t] = (ctx.states[j + 1][t].float() - ctx.states[j][t].float()).norm()
    return top_k(scores, ctx.candidates, ctx.keep)


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


@pytest.mark.parametrize("family", ["llava", "internvl"])
def test_keep_all_is_stock(family):
    config = RoutingConfig("reroute", (2, 4), (1.0, 1.0), scorer="v2drop")
    assert_keep_all_is_stock(FAMILIES[family], tiny_model(FAMILIES[family]), config)


def test_rerouted_tokens_compete_with_their_last_variation():
    """Under reroute a deferred token's change across the layer it skipped is 0 and it would never win
    a seat back from a token that ran; scored by the last layer that ran it, it can: here decision 3
    (layer 5) keeps fewer tokens than decision 2 (layer 3) yet takes some that layer 4 did not run."""
    fam = FAMILIES["llava"]
    _, trace = routed(tiny_model(fam), CONFIGS["reroute"], fam.make_batch([fam.make_prompt(2, seed=3)]))
    _, second, third = (set(chosen) for chosen in trace.samples[0].selected)
    assert len(third) < len(second) and len(third - second) == 11


@pytest.mark.parametrize("tier", [192, 128, 64])
def test_the_pair_runs_at_one_budget(tier):
    shape = reroute.backbones.released_shapes()["llava-1.5-7b"].config()
    removal, rerouted = (reroute.cost(reroute.preset(n, tier=tier, model=shape), shape) for n in PRESETS)
    assert removal.avg_t == rerouted.avg_t and removal.kv_cache_bytes == rerouted.kv_cache_bytes
    assert removal.flops_paper == rerouted.flops_paper and abs(removal.avg_t_continuous - tier) < 1e-6
