"""Property test: over random schedules, ratios, paddings and image counts, every invariant holds."""

from __future__ import annotations

import torch
from tests.helpers.harness import reference_logits, visual_mask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.helpers.models import FAMILIES

import reroute
from reroute import RoutingConfig
from reroute.runtime.compat import output_cache

MODELS = {name: family.make_model() for name, family in FAMILIES.items()}


@st.composite
def scenarios(draw):
    family = draw(st.sampled_from(sorted(FAMILIES)))
    action = draw(st.sampled_from(["remove", "reroute"]))
    layers = tuple(sorted(draw(st.sets(st.integers(1, 5), min_size=1, max_size=3))))
    ratios = [draw(st.floats(0.01, 1.0)) for _ in layers]
    if action == "remove":
        ratios = sorted(ratios, reverse=True)
    execution = draw(st.sampled_from(["stagewise", "per_layer"])) if action == "reroute" else "stagewise"
    config = RoutingConfig(action, layers, tuple(ratios), execution=execution)
    prompts = [
        FAMILIES[family].make_prompt(
            draw(st.integers(0, 2)), size=draw(st.integers(0, 1)), seed=draw(st.integers(0, 10**6)),
            text_before=draw(st.integers(1, 6)),
        )
        for _ in range(draw(st.integers(1, 3)))
    ]
    return family, config, prompts, draw(st.sampled_from(["left", "right"]))


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(scenarios())
def test_routed_batch_matches_reference_and_invariants(scenario):
    family, config, prompts, padding_side = scenario
    model = MODELS[family]
    inputs = FAMILIES[family].make_batch(prompts, padding_side)
    with reroute.apply(model, config) as handle, torch.no_grad():
        out = model(**inputs, use_cache=True)
    trace = handle.trace
    # engine == slow reference, per sample, on every real row
    mask = inputs["attention_mask"].bool()
    for b, (ref, _) in enumerate(reference_logits(model, inputs, visual_mask(model, inputs), config)):
        real = torch.nonzero(mask[b]).flatten()
        torch.testing.assert_close(out.logits[b, real], ref, atol=3e-5, rtol=0)
    # each layer's cache holds that layer's active set (the batch's longest one)
    assert [layer.keys.shape[-2] for layer in output_cache(out).layers] == list(trace.cache_lengths)
    assert list(trace.cache_lengths) == [max(s.tokens_per_layer[i] for s in trace) for i in range(6)]
    for sample in trace:
        counts = config.keep_counts(sample.num_visual)
        # per-layer visual counts follow the schedule exactly; avg_T is their mean
        assert list(sample.visual_per_layer) == (
            config.visual_counts_per_layer(sample.num_visual, 6) if sample.routed else [0] * 6
        )
        assert [len(sel) for sel in sample.selected] == (list(counts) if sample.routed else [0] * len(counts))
        if config.action == "remove":  # survivors only shrink
            for earlier, later in zip(sample.selected, sample.selected[1:]):
                assert set(later) <= set(earlier)
