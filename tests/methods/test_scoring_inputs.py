"""What the engine hands a scorer beyond the attention row (docs/semantics.md §19): the visual and
candidate tokens, the keep counts, the scorer's parameters and the previous layer's input, checked
against the routed forward's own hidden states."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tests.helpers.harness import routed
from tests.helpers.models import FAMILIES

from reroute import RoutingConfig
from reroute.backbones import backbone_for
from reroute.methods import SCORERS, Scorer, ScoringInputs, register_scorer


@pytest.fixture
def recorder():
    """A scorer that ranks by key norm (any deterministic rule will do) and records its inputs."""
    seen: list[ScoringInputs] = []

    @register_scorer
    class Recorder(Scorer):
        name = "recorder_test"
        reads_previous_layer = True
        params = {"scale": 1.0}

        def score(self, inputs: ScoringInputs) -> torch.Tensor:
            # the engine reuses its full-length buffer in place after scoring: keep a copy
            seen.append(dataclasses.replace(inputs, hidden=inputs.hidden.clone()))
            return inputs.hidden.norm(dim=-1) * inputs.params["scale"]

    yield Recorder.name, seen
    SCORERS.unregister(Recorder.name)


@pytest.mark.parametrize("action", ["reroute", "remove"])
@torch.no_grad()
def test_scorer_sees_visual_candidates_keep_and_previous_layer(recorder, action):
    name, seen = recorder
    fam = FAMILIES["llava"]
    model = fam.make_model()
    inputs = fam.make_batch([fam.make_prompt(2, seed=1), fam.make_prompt(1, seed=2)])  # padded batch
    config = RoutingConfig(action, (2, 4), (0.5, 0.25), scorer=name, scorer_params={"scale": 2.0})
    out, trace = routed(model, config, inputs, output_hidden_states=True)
    visual = backbone_for(model).visual_mask(model.config, inputs["input_ids"]) & inputs["attention_mask"].bool()
    assert len(seen) == 2
    for stage, (layer, got) in enumerate(zip(config.decision_layers, seen)):
        assert got.decision == stage and got.params == {"scale": 2.0}
        counts = [config.keep_counts(int(n))[stage] for n in visual.sum(dim=1)]
        assert got.keep.tolist() == counts
        if action == "reroute":  # every token is a key: the scorer sees the full-length prompt
            assert torch.equal(got.visual, visual)
            assert torch.equal(got.candidates, visual)  # every visual token competes again
            # the routed forward's hidden states are every token's latest state, entering each layer
            torch.testing.assert_close(got.hidden, out.hidden_states[layer], rtol=0, atol=0)
            torch.testing.assert_close(got.previous_hidden, out.hidden_states[layer - 1], rtol=0, atol=0)
        else:  # remove: the compact survivors; candidates are the surviving visual tokens
            assert torch.equal(got.candidates, got.visual)
            entering = [int(n) if stage == 0 else config.keep_counts(int(n))[0] for n in visual.sum(dim=1)]
            assert got.visual.sum(dim=1).tolist() == entering
        assert got.sample_length.tolist() == inputs["attention_mask"].sum(dim=1).tolist()


def test_scorer_params_are_checked_at_construction(recorder):
    name, _ = recorder
    with pytest.raises(ValueError, match=r"^scorer 'recorder_test' has no parameter 'seed': it accepts scale$"):
        RoutingConfig("reroute", (2,), (0.5,), scorer=name, scorer_params={"seed": 1})
    with pytest.raises(ValueError, match=r"^scorer 'last_token' has no parameter 'seed': it accepts none$"):
        RoutingConfig("reroute", (2,), (0.5,), scorer_params={"seed": 1})
    assert RoutingConfig("reroute", (2,), (0.5,), scorer=name).scorer_parameters == {"scale": 1.0}
