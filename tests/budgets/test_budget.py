"""Budgets, the solver and the presets (docs/semantics.md §1, §4)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlavaConfig, Qwen2_5_VLConfig

from reroute.budgets import (
    SCHEDULE_SHAPES as SHAPES,
    PresetSpec,
    avg_t,
    geometric_shape,
    halving_shape,
    num_decoder_layers,
    preset,
    preset_names,
    scale_decision_layers,
    schedule_avg_t,
    solve,
    visual_counts,
)
from reroute.config import RoutingConfig
from reroute.registry import PRESETS as PRESET_REGISTRY

# the presets of one action with a published schedule (FastV, PDrop and Reroute's counterparts)
# (the methods of docs/semantics.md §20 are checked in tests/methods/)
SECTION_4 = ("fastv", "pdrop", "reroute_vs_fastv", "reroute_vs_pdrop")
PRESETS = {spec.name: spec for spec in PRESET_REGISTRY if isinstance(spec, PresetSpec) and spec.name in SECTION_4}

# docs/semantics.md §4's table, typed in again on purpose: the module must reproduce it, not define it.
PUBLISHED = {
    ("fastv", 192): ((3,), (0.2644,)),
    ("fastv", 128): ((3,), (0.1418,)),
    ("fastv", 64): ((3,), (0.01916,)),
    ("pdrop", 192): ((2, 7, 15, 23), (0.5965, 0.3558, 0.2123, 0.1266)),
    ("pdrop", 128): ((2, 7, 15, 23), (0.4570, 0.2088, 0.0954, 0.0436)),
    ("pdrop", 64): ((2, 7, 15, 23), (0.2789, 0.0937, 0.0315, 0.0106)),
    ("reroute_vs_fastv", 192): ((3, 7, 15, 23), (0.2644,) * 4),
    ("reroute_vs_fastv", 128): ((3, 7, 15, 23), (0.1418,) * 4),
    ("reroute_vs_fastv", 64): ((3, 7, 15, 23), (0.01916,) * 4),
    ("reroute_vs_pdrop", 192): ((2, 7, 15, 23), (0.4502, 0.4502, 0.2251, 0.1126)),
    ("reroute_vs_pdrop", 128): ((2, 7, 15, 23), (0.2655, 0.2655, 0.1328, 0.0664)),
    ("reroute_vs_pdrop", 64): ((2, 7, 15, 23), (0.1392, 0.1392, 0.0696, 0.0348)),
}
ACTION = {"fastv": "remove", "pdrop": "remove", "reroute_vs_fastv": "reroute", "reroute_vs_pdrop": "reroute"}
# The PDrop-shaped tier-64 sets do not give tier 64 (docs/semantics.md §4, "measured consequences").
INCONSISTENT = {("pdrop", 64): 80.8, ("reroute_vs_pdrop", 64): 84.2}
CONSISTENT = [key for key in PUBLISHED if key not in INCONSISTENT]


# ---------------------------------------------------------------- avg_T


def test_avg_t_counts_every_layer_and_the_layers_before_the_first_decision():
    # 2 layers see all 100 tokens, 3 layers see 50, 5 layers see 10: (200 + 150 + 50) / 10
    assert visual_counts((2, 5), (0.5, 0.1), 10, 100) == (100, 100, 50, 50, 50, 10, 10, 10, 10, 10)
    assert schedule_avg_t((2, 5), (0.5, 0.1), 10, 100) == pytest.approx(40.0)
    # integer counts floor N r, at least 1: 0.333 * 100 -> 33, 0.001 * 100 -> 1
    assert visual_counts((2, 5), (0.333, 0.001), 10, 100, integer=True) == (100, 100, 33, 33, 33, 1, 1, 1, 1, 1)
    assert avg_t(None, 32, 576) == 576


@pytest.mark.parametrize("key", sorted(PUBLISHED))
def test_integer_avg_t_is_the_mean_of_the_counts_the_config_keeps(key):
    config = preset(*key, ratios="paper")
    assert avg_t(config, 32, 576, integer=True) == sum(config.visual_counts_per_layer(576, 32)) / 32


# ---------------------------------------------------------------- the published table


@pytest.mark.parametrize("key", sorted(PUBLISHED))
def test_paper_presets_are_the_published_table(key):
    name, tier = key
    layers, ratios = PUBLISHED[key]
    for config in (preset(name, tier, ratios="paper"), preset(name, tier, num_layers=32, ratios="paper")):
        assert config == RoutingConfig(action=ACTION[name], decision_layers=layers, keep_ratios=ratios)


@pytest.mark.parametrize("key", sorted(PUBLISHED))
def test_published_sets_hit_their_tier_on_llava_except_pdrop_shaped_tier_64(key):
    config = preset(*key, ratios="paper")
    achieved = avg_t(config, 32, 576)
    if key in INCONSISTENT:
        assert achieved == pytest.approx(INCONSISTENT[key], abs=0.1)
    else:
        assert achieved == pytest.approx(key[1], abs=0.05)  # the published ratios have 4 digits


@pytest.mark.parametrize("key", CONSISTENT)
def test_solver_reproduces_every_consistent_published_set_to_4_decimals(key):
    solved = preset(*key)  # ratios="solved" is the default
    _, published = PUBLISHED[key]
    assert solved.decision_layers == PUBLISHED[key][0]
    assert [round(r, 4) for r in solved.keep_ratios] == [round(r, 4) for r in published]
    assert avg_t(solved, 32, 576) == pytest.approx(key[1], abs=1e-9)


def test_pdrop_lambdas_of_spec():
    assert round(solve("geometric", (2, 7, 15, 23), 32, 192).param, 4) == 0.5965
    assert round(solve("geometric", (2, 7, 15, 23), 32, 128).param, 4) == 0.4570


@pytest.mark.parametrize("key", sorted(INCONSISTENT))
def test_solver_exposes_the_inconsistent_tier_64_sets(key):
    solved = preset(*key)
    assert avg_t(solved, 32, 576) == pytest.approx(64, abs=1e-9)
    published = PUBLISHED[key][1]
    assert max(abs(a - b) for a, b in zip(solved.keep_ratios, published)) > 0.01
    # and the published pdrop set is not even geometric: r_1 != r_2 / r_1
    if key[0] == "pdrop":
        assert abs(published[0] - published[1] / published[0]) > 0.05


def test_qwen_avg_t_ranges_of_spec():
    qwen = Qwen2_5_VLConfig(text_config=dict(num_hidden_layers=28))
    for tier, low, high in ((128, 129.7, 134.6), (64, 71.6, 88.4)):
        achieved = [avg_t(preset(name, tier, model=qwen, ratios="paper"), 28, 576) for name in PRESETS]
        assert round(min(achieved), 1) == low
        assert round(max(achieved), 1) == high
        # solved ratios hit the tier on Qwen's depth
        for name in PRESETS:
            assert avg_t(preset(name, tier, model=qwen), 28, 576) == pytest.approx(tier, abs=1e-9)


# ---------------------------------------------------------------- shapes and solver


def test_shapes():
    assert geometric_shape(0.5, 4) == (0.5, 0.25, 0.125, 0.0625)
    assert halving_shape(0.4, 4) == (0.4, 0.4, 0.2, 0.1)
    assert halving_shape(0.4, 6) == (0.4, 0.4, 0.2, 0.1, 0.05, 0.025)
    assert halving_shape(0.4, 1) == (0.4,)


@st.composite
def schedules(draw):
    num_layers = draw(st.integers(2, 80))
    count = draw(st.integers(1, min(6, num_layers - 1)))
    layers = tuple(sorted(draw(st.sets(st.integers(1, num_layers - 1), min_size=count, max_size=count))))
    shape = draw(st.sampled_from(sorted(SHAPES)))
    num_visual = draw(st.integers(1, 5000))
    return shape, layers, num_layers, num_visual


@settings(max_examples=300, deadline=None)
@given(schedules(), st.floats(1e-3, 1.0))
def test_round_trip_ratios_avg_t_ratios(schedule, param):
    shape, layers, num_layers, num_visual = schedule
    ratios = SHAPES[shape](param, len(layers))
    target = schedule_avg_t(layers, ratios, num_layers, num_visual)
    solution = solve(shape, layers, num_layers, target, num_visual=num_visual)
    assert solution.param == pytest.approx(param, rel=1e-9, abs=1e-12)
    assert solution.keep_ratios == pytest.approx(ratios, rel=1e-8, abs=1e-12)
    assert solution.avg_t == pytest.approx(target, rel=1e-12)
    assert solution.avg_t_integer == schedule_avg_t(layers, ratios, num_layers, num_visual, integer=True) or (
        # integer counts may differ only where N r sits on an integer (float noise at the floor)
        any(abs(num_visual * r - round(num_visual * r)) < 1e-6 for r in ratios)
    )


@settings(max_examples=200, deadline=None)
@given(schedules(), st.floats(0.0, 1.0))
def test_solver_hits_any_reachable_target(schedule, fraction):
    shape, layers, num_layers, num_visual = schedule
    low = layers[0] * num_visual / num_layers  # layers before the first decision
    high = schedule_avg_t(layers, SHAPES[shape](1.0, len(layers)), num_layers, num_visual)
    target = low + (high - low) * max(fraction, 1e-6)
    solution = solve(shape, layers, num_layers, target, num_visual=num_visual)
    assert solution.avg_t == pytest.approx(target, rel=1e-12)
    assert all(0 < r <= 1 for r in solution.keep_ratios)
    # integer counts floor, so they never exceed the continuous budget
    assert solution.avg_t_integer <= solution.avg_t + 1e-9 or min(solution.keep_counts) == 1


def test_solver_for_a_fraction_of_vanilla_flops():
    llava = LlavaConfig(text_config=LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32))
    solution = solve("geometric", (2, 7, 15, 23), 32, target_flops_fraction=0.3, model=llava, num_text=64)
    assert solution.flops_fraction == pytest.approx(0.3, rel=1e-12)
    from reroute.budgets.cost import cost

    report = cost(RoutingConfig("remove", solution.decision_layers, solution.keep_ratios), llava)
    assert report.flops_paper_ratio == pytest.approx(0.3, abs=0.002)  # integer counts: slightly below


def test_other_tiers_work_with_solved_ratios():
    for tier in (300, 100, 60):
        for name in PRESETS:
            assert avg_t(preset(name, tier), 32, 576) == pytest.approx(tier, abs=1e-9)
    config = preset("pdrop", 200, num_layers=28, num_visual=1024)
    assert avg_t(config, 28, 1024) == pytest.approx(200, abs=1e-9)


# ---------------------------------------------------------------- decision layers on other depths


def test_layer_scaling_to_qwen_depth():
    assert scale_decision_layers((3, 7, 15, 23), 28) == (3, 6, 13, 20)
    assert scale_decision_layers((2, 7, 15, 23), 28) == (2, 6, 13, 20)
    assert scale_decision_layers((3,), 28) == (3,)
    assert scale_decision_layers((2, 7, 15, 23), 32) == (2, 7, 15, 23)
    assert preset("reroute_vs_fastv", 128, num_layers=28).decision_layers == (3, 6, 13, 20)
    assert preset("pdrop", 128, num_layers=28).decision_layers == (2, 6, 13, 20)


def test_layer_scaling_resolves_collisions_deterministically():
    assert scale_decision_layers((3, 7, 15, 23), 8) == (1, 2, 4, 6)
    assert scale_decision_layers((2, 7, 15, 23), 8) == (1, 2, 4, 6)  # 0.5 rounds up
    assert scale_decision_layers((3, 7, 15, 23), 5) == (1, 2, 3, 4)
    assert scale_decision_layers((3, 7, 15, 23), 6) == (1, 2, 3, 4)  # 0.56 -> 1, 1.31 -> 1 -> 2
    assert scale_decision_layers((3,), 2) == (1,)


@given(st.integers(2, 128), st.lists(st.integers(0, 40), min_size=1, max_size=6, unique=True))
def test_scaled_layers_are_strictly_increasing_inside_the_decoder(num_layers, layers):
    layers = sorted(layers)
    if num_layers < len(layers) + 1:
        with pytest.raises(ValueError):
            scale_decision_layers(layers, num_layers)
        return
    scaled = scale_decision_layers(layers, num_layers)
    assert all(1 <= d < num_layers for d in scaled)
    assert all(a < b for a, b in zip(scaled, scaled[1:]))


@pytest.mark.parametrize("num_layers", [2, 3, 4, 5, 8, 12, 28, 32, 40, 80])
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_on_any_depth(name, num_layers):
    decisions = len(PRESETS[name].reference_layers)
    if num_layers < decisions + 1:
        with pytest.raises(ValueError, match="needs at least"):
            preset(name, 128, num_layers=num_layers)
        return
    first = scale_decision_layers(PRESETS[name].reference_layers, num_layers)[0]
    if first * 576 / num_layers >= 128:  # the layers before the first decision already exceed the tier
        with pytest.raises(ValueError, match="is not reachable"):
            preset(name, 128, num_layers=num_layers)
        return
    config = preset(name, 128, num_layers=num_layers)
    assert config.action == ACTION[name]
    assert avg_t(config, num_layers, 576) == pytest.approx(128, abs=1e-9)
    paper = preset(name, 128, num_layers=num_layers, ratios="paper")
    assert paper.keep_ratios == PUBLISHED[(name, 128)][1]
    assert paper.decision_layers == config.decision_layers


def test_model_argument_forms():
    llava = LlavaConfig(text_config=LlamaConfig(num_hidden_layers=32))
    qwen = Qwen2_5_VLConfig(text_config=dict(num_hidden_layers=28))
    assert num_decoder_layers(llava) == 32
    assert num_decoder_layers(qwen) == 28
    assert num_decoder_layers(LlamaConfig(num_hidden_layers=7)) == 7
    assert num_decoder_layers(12) == 12
    assert preset("pdrop", 64, model=qwen) == preset("pdrop", 64, model=28) == preset("pdrop", 64, num_layers=28)
    assert preset("pdrop", 64, model=qwen, num_layers=28) == preset("pdrop", 64, num_layers=28)

    class Wrapper:  # anything with a .config, as a loaded model has
        config = qwen

    assert preset("fastv", 192, model=Wrapper()) == preset("fastv", 192, num_layers=28)


# ---------------------------------------------------------------- errors


def test_error_messages():
    def message(fn, *args, **kwargs):
        with pytest.raises(ValueError) as info:
            fn(*args, **kwargs)
        return str(info.value)

    # every registered preset, the paper's first (method folders append theirs)
    assert message(preset, "fastvv", 128) == "unknown preset 'fastvv': use one of " + ", ".join(preset_names())
    assert preset_names()[:6] == ("fastv", "pdrop", "reroute_vs_fastv", "reroute_vs_pdrop", "nuwa", "nuwa_reroute")
    assert message(preset, "pdrop", 100, ratios="paper") == (
        "ratios='paper' has no published set for tier 100: the paper publishes tiers 192, 128, 64; "
        "use ratios='solved' for other tiers"
    )
    assert message(preset, "pdrop", 128, ratios="published") == "ratios must be 'solved' or 'paper', got 'published'"
    assert message(preset, "pdrop", 128, model=28, num_layers=32) == (
        "num_layers=32 disagrees with the model's 28 decoder layers: pass one of them"
    )
    assert message(preset, "pdrop", 128, num_layers=4) == (
        "a 4-decision schedule needs at least 5 decoder layers (decisions at layers 1..num_layers-1), "
        "got num_layers=4; use a deeper model or a schedule with fewer decisions"
    )
    assert message(preset, "fastv", 50) == (
        "target avg_T 50 is not reachable: with the first decision at layer 3 of 32, the layers before it "
        "alone give 54; decide earlier or raise the target"
    )
    assert message(preset, "reroute_vs_pdrop", 500) == (
        "target avg_T 500 is above the most the halving shape keeps on layers (2, 7, 15, 23) "
        "(382.5 at parameter 1); lower the target"
    )
    assert message(solve, "linear", (3,), 32, 128) == (
        "unknown schedule shape 'linear': use one of constant, geometric, halving, geometric_then_one (or pass a function)"
    )
    assert message(solve, "constant", (3,), 32) == "give exactly one of target_avg_t and target_flops_fraction"
    assert message(solve, "constant", (3,), 32, target_flops_fraction=0.5) == (
        "target_flops_fraction needs the model's dimensions: pass model= (a model, config or DecoderDims)"
    )
    assert message(num_decoder_layers, object()) == (
        "cannot find the decoder's layer count in object: pass a transformers model or config with "
        "text_config.num_hidden_layers, or num_layers=<int>"
    )


def test_tier_at_the_top_of_the_shape_is_reachable():
    # constant shape at parameter 1 keeps everything: avg_T = N exactly
    solution = solve("constant", (3,), 32, 576)
    assert solution.param == 1.0 and solution.keep_counts == (576,)
    assert math.isclose(solution.avg_t, 576)
