"""SparseVLM v1.5 with recycling through the real engine (scorer `sparsevlm_v15`, preset
`sparsevlm_v15`; docs/semantics.md §21): the routed logits equal the slow per-sample reference
(tests/helpers/sparsevlm_v15_reference.py, itself equal to the official loop, see
test_recycle_official_forward.py), a padded batch equals its samples alone, greedy generate()'s
logits equal the reference decode (per-layer renumbered positions), keep 1.0 is stock, the pair
runs at the same per-layer counts and cost, and what it cannot run is refused in one line."""

from __future__ import annotations

import re

import pytest
import torch
from tests.helpers.harness import decoder_inputs
from tests.helpers.models import FAMILIES, LLAVA_IMAGE_TOKEN, llava_batch, llava_prompt
from tests.helpers.sparsevlm_v15_reference import recycling_forward
from tests.methods.sparsevlm.test_sparsevlm_official import tiny_llava32

import reroute
from reroute import RoutingConfig
from reroute.backbones.llava import llava_1_5_7b
from reroute.budgets.cost import cost
from reroute.methods.sparsevlm.raters import select_raters

ATOL = 1e-5
CONFIGS = {
    "one merged each": RoutingConfig("remove", (2, 3, 5), (0.75, 0.5, 0.25), scorer="sparsevlm_v15"),
    "deep prune": RoutingConfig("remove", (1, 4), (0.2, 0.1), scorer="sparsevlm_v15"),
}


@pytest.fixture(scope="module")
def model():
    return tiny_llava32(seed=3)


def prompts():
    return [llava_prompt(1, text_before=2 + i, text_after=3 + 2 * i, seed=i) for i in range(3)]


def reference(model, prompt, config, appended_ids=None):
    """The reference's normed final states of ``prompt`` (+ appended tokens), the sequence and its record."""
    text_model = model.model.language_model
    embeds = decoder_inputs(model, llava_batch([prompt]))["inputs_embeds"][0]
    visual = [t == LLAVA_IMAGE_TOKEN for t in prompt.ids]
    raters = select_raters(embeds[None], torch.tensor([visual]), torch.ones(1, len(visual), dtype=torch.bool))[0].tolist()
    appended = None if appended_ids is None else text_model.embed_tokens(appended_ids)
    keep = config.keep_counts(sum(visual))
    return recycling_forward(text_model, embeds, visual, raters, config.decision_layers, keep, appended=appended)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@torch.no_grad()
def test_logits_and_decisions_equal_the_reference(model, name):
    config = CONFIGS[name]
    for prompt in prompts():
        with reroute.apply(model, config) as handle:
            logits = model(**llava_batch([prompt])).logits[0]
        states, sequence, record = reference(model, prompt, config)
        text = [j for j, t in enumerate(sequence) if not t.visual]  # every text token runs to the end
        torch.testing.assert_close(logits[[sequence[j].position for j in text]], model.lm_head(states[text]), atol=ATOL, rtol=0)
        sample = handle.trace.samples[0]
        # the trace names the kept prompt positions; merged tokens count in visual_per_layer only
        assert [tuple(t.position for t in kept if t.merged is None) for kept in record.kept] == list(sample.selected)
        counts = config.stage_visual_counts(16)
        assert [len(k) + len(m) for k, m in zip(record.kept, record.merged)] == list(counts)
        stage = [config.stage_of_layer(i) for i in range(6)]
        assert list(sample.visual_per_layer) == [16 if s < 0 else counts[s] for s in stage]
        lengths = [len(prompt.ids) if s < 0 else record.lengths[s] for s in stage]
        assert list(handle.trace.cache_lengths) == lengths


@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_padded_batch_equals_alone(model, side):
    """Every sample renumbers its own real tokens, so padding and companions change nothing (a
    text-only sample included: it runs unrouted, at its stock positions)."""
    config = CONFIGS["one merged each"]
    batch = prompts() + [llava_prompt(0, text_before=4, text_after=3, seed=9)]
    inputs = llava_batch(batch, padding_side=side)
    with reroute.apply(model, config) as handle:
        logits = model(**inputs).logits
        trace = handle.trace
        for b, prompt in enumerate(batch):
            alone = model(**llava_batch([prompt])).logits[0]
            rows = inputs["attention_mask"][b].bool()
            torch.testing.assert_close(logits[b, rows], alone, atol=ATOL, rtol=0)
            assert trace.samples[b].visual_per_layer == handle.trace.samples[0].visual_per_layer
            if side == "right":  # same prompt positions
                assert trace.samples[b].selected == handle.trace.samples[0].selected


@torch.no_grad()
def test_generate_equals_the_reference_decode(model):
    """Greedy generate() on a left-padded batch: each step's logits are the reference's with the tokens
    generated so far appended (each layer's positions continue its own renumbered sequence)."""
    config = CONFIGS["one merged each"]
    batch = prompts()[:2]
    new = 4
    inputs = llava_batch(batch, padding_side="left")
    with reroute.apply(model, config):
        out = model.generate(
            **inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False, suppress_tokens=[LLAVA_IMAGE_TOKEN],
            return_dict_in_generate=True, output_logits=True,
        )  # fmt: skip
    steps = torch.stack(out.logits, dim=1)  # (B, new, V)
    for b, prompt in enumerate(batch):
        generated = out.sequences[b, -new:]
        states, _, _ = reference(model, prompt, config, appended_ids=generated[:-1])
        torch.testing.assert_close(steps[b], model.lm_head(states[-new:]), atol=ATOL, rtol=0)


@torch.no_grad()
def test_keep_one_is_stock(model):
    """Nothing pruned, nothing merged: the positions renumbered over every token are the stock ones."""
    config = RoutingConfig("remove", (2, 3, 5), 1.0, scorer="sparsevlm_v15")
    inputs = llava_batch(prompts(), padding_side="left")
    stock = model(**inputs).logits
    with reroute.apply(model, config):
        torch.testing.assert_close(model(**inputs).logits, stock, atol=ATOL, rtol=0)


@pytest.mark.parametrize("tier", [192, 128, 64])
@pytest.mark.parametrize("ratios", ["paper", "solved"])
def test_pair_runs_at_the_same_counts_and_cost(tier, ratios):
    """`reroute_vs_sparsevlm_v15` keeps at each stage what `sparsevlm_v15` runs there (kept + merged):
    the same avg_T, FLOPs and KV cache (what `reroute cost` prints)."""
    llava = llava_1_5_7b()
    removal = reroute.preset("sparsevlm_v15", tier=tier, model=llava, ratios=ratios)
    rerouted = reroute.preset("reroute_vs_sparsevlm_v15", tier=tier, model=llava, ratios=ratios)
    assert removal.scorer == "sparsevlm_v15" and rerouted.scorer_parameters == {"head_fraction": 1.0, "gravity": 0.0}
    assert rerouted.keep_counts(576) == removal.stage_visual_counts(576)
    a, b = cost(removal, llava), cost(rerouted, llava)
    assert (a.avg_t, a.flops_exact, a.kv_cache_bytes) == (b.avg_t, b.flops_exact, b.kv_cache_bytes)
    if ratios == "paper":  # v1.5's table, the merged tokens on top (192: 309/204/113 run, avg_T 206.5)
        table = {192: (300, 200, 110), 128: (303, 110, 36), 64: (66, 30, 17)}[tier]
        assert removal.keep_counts(576) == table
        assert a.avg_t == {192: 206.5, 128: 145.40625, 64: 82.25}[tier]
    else:
        assert abs(a.avg_t_continuous - tier) < 0.5


def test_what_recycling_cannot_run_is_refused(model):
    with pytest.raises(ValueError, match="^scorer 'sparsevlm_v15' recycles pruned tokens .* action='remove'"):
        RoutingConfig("reroute", (2,), 0.5, scorer="sparsevlm_v15")
    for name, family in (("qwen2_vl", "Qwen2-VL"), ("llava_next", "LLaVA-NeXT/OneVision"), ("internvl", "InternVL")):
        other = FAMILIES[name].make_model()
        message = (
            "a recycling scorer (SparseVLM v1.5, docs/semantics.md §21) is defined for LLaVA-1.5, the model of its "
            f"official code (1-D rotary positions, renumbered per layer), not {family}; use scorer='sparsevlm' "
            "(v2.0, no recycling)"
        )
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            reroute.apply(other, RoutingConfig("remove", (2,), 0.5, scorer="sparsevlm_v15"))
        assert "forward" not in other.model.__dict__
        assert reroute.budgets.presets.PRESETS.get("sparsevlm_v15").refusal(other) == message
    with reroute.apply(model, CONFIGS["one merged each"]), pytest.raises(ValueError, match="^output_hidden_states"):
        model(**llava_batch(prompts()[:1]), output_hidden_states=True)
    with reroute.apply(model, CONFIGS["one merged each"]), pytest.raises(ValueError, match="routed static cache"):
        model.generate(**llava_batch(prompts()[:1]), max_new_tokens=2, cache_implementation="static")
