"""Scores on request: ``reroute.apply(model, config, record_scores=True)`` keeps every decision's
candidates and scores in the trace; a plain run keeps none and decides the same."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.harness import decoder_inputs, rotary_positions, routed, visual_mask
from tests.helpers.models import FAMILIES
from tests.helpers.reference import reference_forward

import reroute
from reroute import RoutingConfig

CONFIGS = {
    "remove": RoutingConfig("remove", (1, 3, 4), (0.5, 0.25, 0.1)),
    "reroute": RoutingConfig("reroute", (1, 3, 4), (0.3, 0.5, 0.2)),
}


@pytest.fixture(scope="module", params=["llava", "qwen2_5_vl"])
def family(request):
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def model(family):
    return family.make_model()


def _recorded(model, config, inputs):
    with reroute.apply(model, config, record_scores=True) as handle, torch.no_grad():
        out = model(**inputs)
    return out, handle.trace


@pytest.mark.parametrize("name", list(CONFIGS))
def test_recorded_scores_equal_the_reference_and_decide_the_selection(family, model, name):
    config = CONFIGS[name]
    inputs = family.make_batch([family.make_prompt(2, size=1, seed=4)])
    out, trace = _recorded(model, config, inputs)
    plain_out, plain = routed(model, config, inputs)
    assert torch.equal(out.logits, plain_out.logits) and trace == plain  # recording changes nothing
    assert plain[0].scores is None

    captured = decoder_inputs(model, inputs)
    length = inputs["input_ids"].shape[1]
    visual = visual_mask(model, inputs)[0].tolist()
    expected = []
    reference_forward(
        model.model.language_model, rotary_positions(captured, 0, length, 0), captured["inputs_embeds"][0],
        visual, config, scores_out=expected,
    )
    sample = trace[0]
    assert len(sample.scores) == len(expected) == config.num_decisions
    all_visual = [j for j, v in enumerate(visual) if v]
    for s, (recorded, reference) in enumerate(zip(sample.scores, expected)):
        # candidates: every visual token under reroute; the previous decision's survivors under remove
        candidates = all_visual if (name == "reroute" or s == 0) else list(sample.selected[s - 1])
        assert recorded.positions.tolist() == candidates == sorted(reference)
        assert recorded.scores.dtype == torch.float32 and recorded.scores.device.type == "cpu"
        torch.testing.assert_close(recorded.scores, torch.tensor([reference[j] for j in candidates]), atol=2e-6, rtol=1e-4)
        # the selection is the top k of the recorded scores, ties toward the lower position
        k = len(sample.selected[s])
        top = sorted(zip(recorded.scores.tolist(), recorded.positions.tolist()), key=lambda t: (-t[0], t[1]))[:k]
        assert sorted(p for _, p in top) == list(sample.selected[s])


def test_recorded_scores_in_a_padded_batch_equal_each_sample_alone(family, model):
    prompts = [family.make_prompt(2, size=0, seed=1), family.make_prompt(1, size=1, seed=2, text_before=6)]
    config = CONFIGS["reroute"]
    _, batch = _recorded(model, config, family.make_batch(prompts, "left"))
    length = batch.samples[0].tokens_per_layer[0]
    for b, prompt in enumerate(prompts):
        _, alone = _recorded(model, config, family.make_batch([prompt]))
        offset = length - len(prompt.ids)  # left padding shifts every position
        for got, want in zip(batch[b].scores, alone[0].scores):
            assert got.positions.tolist() == [p + offset for p in want.positions.tolist()]
            torch.testing.assert_close(got.scores, want.scores, atol=1e-5, rtol=1e-4)


def test_keep_all_is_still_scored_when_recording(family, model):
    """A plain run skips scoring when every candidate is kept; a recorded run scores anyway."""
    inputs = family.make_batch([family.make_prompt(1, seed=3)])
    config = RoutingConfig("reroute", (2,), (1.0,))
    out, trace = _recorded(model, config, inputs)
    with torch.no_grad():
        vanilla = model(**inputs)
    assert torch.equal(out.logits, vanilla.logits)
    (scores,) = trace[0].scores
    assert scores.positions.tolist() == list(trace[0].selected[0]) and len(scores.positions) == trace[0].num_visual
    assert bool((scores.scores > 0).all())


def test_a_sample_without_visual_tokens_records_no_candidates():
    family = FAMILIES["llava"]
    model = family.make_model()
    inputs = family.make_batch([family.make_prompt(1, seed=0), family.make_prompt(0, seed=1)], "left")
    _, trace = _recorded(model, CONFIGS["remove"], inputs)
    assert not trace[1].routed
    assert [len(d.positions) for d in trace[1].scores] == [0, 0, 0]


def test_a_plain_run_neither_collects_nor_scores_more(monkeypatch):
    """Without record_scores nothing is gathered for the trace, and keep-all decisions stay unscored."""
    import reroute.runtime.engine as engine
    import reroute.methods.scorer as scorer

    calls = {"recorded": 0, "scored": 0}
    original_scores = scorer.last_token_attention

    def count_scoring(*args, **kwargs):
        calls["scored"] += 1
        return original_scores(*args, **kwargs)

    def count_recording(*args, **kwargs):
        calls["recorded"] += 1
        return ()

    monkeypatch.setattr(scorer, "last_token_attention", count_scoring)
    monkeypatch.setattr(engine, "_recorded_scores", count_recording)
    family = FAMILIES["llava"]
    model = family.make_model()
    inputs = family.make_batch([family.make_prompt(1, seed=0)])
    routed(model, RoutingConfig("reroute", (1, 3), (1.0, 0.5)), inputs)
    assert calls == {"recorded": 0, "scored": 1}  # only the decision that drops tokens is scored
    _recorded(model, RoutingConfig("reroute", (1, 3), (1.0, 0.5)), inputs)
    assert calls == {"recorded": 1, "scored": 3}  # recorded: one collection per sample, every decision scored
