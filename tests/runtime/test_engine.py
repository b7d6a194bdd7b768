"""The engine's invariants (docs/semantics.md §2, §3, §5), on every supported backbone.

Each test builds a tiny random model from the family's real config classes and compares the
routed model with the vanilla model, with itself under another execution, or with the slow
reference in reference.py.
"""

from __future__ import annotations

import pytest
import torch
from tests.helpers.harness import reference_logits, routed, visual_mask
from tests.helpers.reference_decode import assert_reference_predicts
from tests.helpers.batches import mixed_batch, mixed_prompts, single
from tests.helpers.models import FAMILIES

import reroute
from reroute import RoutingConfig
from reroute.runtime.compat import output_cache

FAMILY_NAMES = list(FAMILIES)
ATOL = 2e-5


CONFIGS = {
    "remove_pdrop": RoutingConfig("remove", (1, 3, 4), (0.5, 0.25, 0.1)),
    "reroute_stagewise": RoutingConfig("reroute", (1, 3, 4), (0.3, 0.5, 0.2)),
    "reroute_per_layer": RoutingConfig("reroute", (1, 3, 4), (0.3, 0.5, 0.2), execution="per_layer"),
    "fastv": RoutingConfig("remove", (2,), (0.25,)),
}


# ----------------------------------------------------------------------------- keep 1.0 == vanilla
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("action", ["remove", "reroute"])
def test_keep_all_is_vanilla_exactly(family, attn, action):
    model = family.make_model(attn=attn)
    _, inputs = mixed_prompts(family), mixed_batch(family, "left")
    with torch.no_grad():
        logits = model(**inputs).logits
        ids = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    config = RoutingConfig(action, (1, 3), (1.0, 1.0))
    with reroute.apply(model, config), torch.no_grad():
        assert torch.equal(model(**inputs).logits, logits)
        assert torch.equal(model.generate(**inputs, max_new_tokens=8, do_sample=False), ids)


# ----------------------------------------------------------------------------- engine == reference
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_engine_equals_reference_per_sample(family, attn, name):
    model = family.make_model(attn=attn)
    config = CONFIGS[name]
    _, inputs = mixed_prompts(family), mixed_batch(family, "left")
    out, trace = routed(model, config, inputs)
    expected = reference_logits(model, inputs, visual_mask(model, inputs), config)
    mask = inputs["attention_mask"].bool()
    for b, (ref, decisions) in enumerate(expected):
        real = torch.nonzero(mask[b]).flatten()
        torch.testing.assert_close(out.logits[b, real], ref, atol=ATOL, rtol=0)
        # the trace names the same positions (shifted by the padding offset)
        shifted = [tuple(int(real[0]) + j for j in chosen) for chosen in decisions]
        assert list(trace[b].selected) == (shifted if trace[b].routed else [()] * config.num_decisions)


def test_single_decision_reroute_equals_remove(family, model):
    inputs = single(family)
    a, _ = routed(model, RoutingConfig("reroute", (2,), (0.2,)), inputs)
    b, _ = routed(model, RoutingConfig("remove", (2,), (0.2,)), inputs)
    assert torch.equal(a.logits, b.logits)


def test_stagewise_equals_per_layer(family, model):
    _, inputs = mixed_prompts(family), mixed_batch(family, "right")
    a, ta = routed(model, CONFIGS["reroute_stagewise"], inputs)
    b, tb = routed(model, CONFIGS["reroute_per_layer"], inputs)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-6, rtol=0)
    assert ta == tb


# ----------------------------------------------------------------------------- residual bypass
def test_deferred_token_leaves_stage_unchanged(family, model, monkeypatch):
    """States seen at each decision: a token deferred in stage s has the same state at d_s and d_{s+1}."""
    from reroute.runtime.engine import RoutedDecoder

    seen = []
    original = RoutedDecoder._score

    def spy(self, layer, h, layout, buffer, *args):
        seen.append(buffer[:, : buffer.shape[1] - 1].clone())
        return original(self, layer, h, layout, buffer, *args)

    monkeypatch.setattr(RoutedDecoder, "_score", spy)
    config = RoutingConfig("reroute", (1, 3, 5), (0.25, 0.5, 0.25))
    inputs = single(family)
    _, trace = routed(model, config, inputs)
    visual = torch.nonzero(visual_mask(model, inputs)[0]).flatten().tolist()
    checked = 0
    for s in range(len(seen) - 1):
        for j in set(visual) - set(trace[0].selected[s]):
            assert torch.equal(seen[s][0, j], seen[s + 1][0, j])
            checked += 1
        for j in trace[0].selected[s]:  # and the active ones did change
            assert not torch.equal(seen[s][0, j], seen[s + 1][0, j])
    assert checked > 0


# ----------------------------------------------------------------------------- KV cache
@pytest.mark.parametrize("name", list(CONFIGS))
def test_cache_length_is_active_count(family, model, name):
    inputs = single(family)
    out, trace = routed(model, CONFIGS[name], inputs, use_cache=True)
    lengths = [layer.keys.shape[-2] for layer in output_cache(out).layers]
    assert lengths == list(trace.cache_lengths) == list(trace[0].tokens_per_layer)
    num_text = inputs["input_ids"].shape[1] - trace[0].num_visual
    assert [n - num_text for n in lengths] == list(trace[0].visual_per_layer)


# ----------------------------------------------------------------------------- batches
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("name", ["remove_pdrop", "reroute_stagewise"])
def test_batch_equals_samples_alone(family, model, padding_side, name):
    config = CONFIGS[name]
    prompts, inputs = mixed_prompts(family), mixed_batch(family, padding_side)
    out, trace = routed(model, config, inputs)
    mask = inputs["attention_mask"].bool()
    for b, prompt in enumerate(prompts):
        alone, alone_trace = routed(model, config, family.make_batch([prompt]))
        real = torch.nonzero(mask[b]).flatten()
        torch.testing.assert_close(out.logits[b, real], alone.logits[0], atol=ATOL, rtol=0)
        assert trace[b].visual_per_layer == alone_trace[0].visual_per_layer
        assert trace[b].routed == alone_trace[0].routed
    assert not trace[2].routed and trace[2].num_visual == 0  # the prompt without images ran unrouted


@pytest.mark.parametrize("name", ["remove_pdrop", "reroute_stagewise"])
def test_generate_batch_equals_samples_alone(family, model, name):
    config = CONFIGS[name]
    prompts, inputs = mixed_prompts(family), mixed_batch(family, "left")
    with reroute.apply(model, config), torch.no_grad():
        batch_ids = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        for b, prompt in enumerate(prompts):
            alone = model.generate(**family.make_batch([prompt]), max_new_tokens=8, do_sample=False)
            assert torch.equal(batch_ids[b, -8:], alone[0, -8:])


# ----------------------------------------------------------------------------- generate
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_generate_equals_reference_decode(family, attn, name):
    """Greedy generate() with the per-layer caches == the reference re-run over prompt + generated tokens."""
    model = family.make_model(attn=attn)
    config = CONFIGS[name]
    inputs = single(family)
    new = 10
    with reroute.apply(model, config), torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    assert_reference_predicts(model, config, inputs, ids)


def test_sampling_generate_is_reproducible_and_uses_routing(family, model):
    inputs = single(family)
    config = RoutingConfig("reroute", (1, 3), (0.2, 0.3))
    with reroute.apply(model, config) as handle, torch.no_grad():
        torch.manual_seed(0)
        a = model.generate(**inputs, max_new_tokens=8, do_sample=True, top_k=0)
        torch.manual_seed(0)
        b = model.generate(**inputs, max_new_tokens=8, do_sample=True, top_k=0)
        assert handle.trace[0].visual_per_layer[1] < handle.trace[0].num_visual
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- restore
def test_restore_is_bit_identical(family, model):
    inputs = single(family)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(**inputs).logits
    handle = reroute.apply(model, CONFIGS["reroute_stagewise"])
    with torch.no_grad():
        assert not torch.equal(model(**inputs).logits, before)
    handle.restore()
    handle.restore()  # idempotent
    assert "forward" not in model.__dict__ and "forward" not in model.model.language_model.__dict__
    after_state = model.state_dict()
    assert state.keys() == after_state.keys() and all(torch.equal(state[k], after_state[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, before)


def test_state_does_not_leak_between_calls(family, model):
    """A second prompt's decisions do not depend on the first call."""
    first, second = single(family, seed=1), single(family, seed=2)
    config = CONFIGS["reroute_stagewise"]
    with reroute.apply(model, config) as handle, torch.no_grad():
        model(**first)
        after_first = model(**second).logits
        trace = handle.trace
    fresh, fresh_trace = routed(model, config, second)
    assert torch.equal(after_first, fresh.logits) and trace == fresh_trace
