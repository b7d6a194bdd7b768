"""Methods as parts: registries, RoutingConfig's plain-data round trip, and a scoring rule
added from outside the library running through `reroute.apply` with the engine unchanged."""

from __future__ import annotations

import json
import re

import pytest
import torch
from tests.helpers.harness import decoder_inputs, routed
from tests.helpers.models import FAMILIES
from tests.helpers.reference import reference_forward

from reroute import RoutingConfig
from reroute.methods import ACTIONS, SCORERS, VISION_STAGES, Scorer, ScoringInputs, get_action, register_scorer


def test_builtin_parts_are_registered():
    assert ACTIONS.names()[:2] == ("remove", "reroute")
    assert "last_token" in SCORERS
    remove, reroute_ = get_action("remove"), get_action("reroute")
    assert (remove.revisits, remove.monotone, remove.executions) == (False, True, ("stagewise",))
    assert (reroute_.revisits, reroute_.monotone, reroute_.executions) == (True, False, ("stagewise", "per_layer"))


def test_a_name_cannot_be_registered_twice():
    class Again(Scorer):
        name = "last_token"

    with pytest.raises(ValueError, match=r"^a scorer named 'last_token' is already registered: choose another name$"):
        register_scorer(Again)
    assert type(SCORERS.get("last_token")).__name__ == "LastTokenScorer"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scorer="magic"), "scorer must be one of {names}, got 'magic'"),
        (dict(vision_stage="magic"), "vision_stage must be one of {stages}, got 'magic'"),
        (
            dict(vision_params={"keep": 0.5}),
            "vision_params are given but vision_stage is None: name the stage, e.g. vision_stage='nuwa'",
        ),
    ],
)
def test_part_errors(kwargs, message):
    message = message.format(names=SCORERS.names(), stages=VISION_STAGES.names())
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        RoutingConfig(**kwargs)


@pytest.mark.parametrize(
    "config",
    [
        RoutingConfig(),
        RoutingConfig("remove", (2, 7, 15, 23), (0.5965, 0.3558, 0.2123, 0.1266)),
        RoutingConfig("reroute", (3, 7, 15, 23), (0.1418,) * 4, execution="per_layer"),
        RoutingConfig("reroute", (2, 5), (1 / 3, 0.1 + 0.2)),  # floats that need all 17 digits
    ],
)
def test_config_round_trips_through_json(config):
    data = json.loads(json.dumps(config.to_dict()))
    assert RoutingConfig.from_dict(data) == config
    assert RoutingConfig.from_dict(data).to_dict() == config.to_dict()
    assert set(data) == {"action", "decision_layers", "keep_ratios", "execution", "scorer", "vision_stage", "vision_params", "scorer_params"}


def test_from_dict_refuses_unknown_fields_and_fills_defaults():
    with pytest.raises(ValueError, match=r"^RoutingConfig has no field 'ratio': use action, decision_layers, "):
        RoutingConfig.from_dict({"ratio": 0.5})
    assert RoutingConfig.from_dict({"decision_layers": [2], "keep_ratios": [0.25]}) == RoutingConfig("reroute", (2,), (0.25,))


# ----------------------------------------------------------------------------- a scorer from outside
class KeyNormScorer(Scorer):
    """A toy rule: the norm of each token's key at the decision layer (no query involved)."""

    name = "key_norm_test"

    def score(self, inputs: ScoringInputs) -> torch.Tensor:
        layer = inputs.layer
        return layer.self_attn.k_proj(layer.input_layernorm(inputs.hidden)).norm(dim=-1)


@pytest.fixture
def key_norm():
    register_scorer(KeyNormScorer)
    try:
        yield KeyNormScorer.name
    finally:
        SCORERS.unregister(KeyNormScorer.name)


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
@torch.no_grad()
def test_new_scorer_runs_through_apply_unchanged(family, key_norm):
    fam = FAMILIES[family]
    model = fam.make_model()
    inputs = fam.make_batch([fam.make_prompt(2, seed=4)])
    config = RoutingConfig("remove", (2,), (0.25,), scorer=key_norm)
    out, trace = routed(model, config, inputs)

    # Direct computation: the states entering layer 2 of the vanilla model, ranked by key norm.
    captured = decoder_inputs(model, inputs)
    text_model = model.model.language_model
    vanilla = model(**inputs, output_hidden_states=True, use_cache=False)
    entering = vanilla.hidden_states[2][0]
    layer = text_model.layers[2]
    norms = layer.self_attn.k_proj(layer.input_layernorm(entering)).norm(dim=-1)
    from reroute.backbones import backbone_for

    visual = backbone_for(model).visual_mask(model.config, inputs["input_ids"])[0]
    positions = torch.nonzero(visual).flatten().tolist()
    k = config.keep_counts(len(positions))[0]
    expected = sorted(sorted(positions, key=lambda j: (-float(norms[j]), j))[:k])
    assert list(trace[0].selected) == [tuple(expected)]

    # and the forward with those decisions equals the slow reference
    from tests.helpers.harness import rotary_positions

    length = inputs["input_ids"].shape[1]
    pos = rotary_positions(captured, 0, length, 0)
    hidden, _ = reference_forward(
        text_model, pos, captured["inputs_embeds"][0], visual.tolist(), config, decisions=[expected]
    )
    torch.testing.assert_close(out.logits[0], model.lm_head(hidden), atol=2e-5, rtol=0)


# ----------------------------------------------------------------------------- actions from outside
@pytest.mark.parametrize("builtin", ["remove", "reroute"])
@torch.no_grad()
def test_engine_and_cost_use_the_action_object_not_its_name(builtin):
    """A copy of a built-in action registered under another name routes and costs exactly alike:
    nothing in the engine, config or cost branches on the name."""
    import dataclasses

    import reroute
    from reroute.methods import register_action

    base = type(get_action(builtin))
    copy = type(f"Copy{base.__name__}", (base,), {"name": f"{builtin}_copy_test"})
    register_action(copy)
    try:
        fam = FAMILIES["llava"]
        model = fam.make_model()
        inputs = fam.make_batch([fam.make_prompt(2, seed=5), fam.make_prompt(1, seed=6)])
        config = RoutingConfig(builtin, (1, 3, 4), (0.5, 0.25, 0.25))
        mirrored = dataclasses.replace(config, action=copy.name)
        a, ta = routed(model, config, inputs)
        b, tb = routed(model, mirrored, inputs)
        assert torch.equal(a.logits, b.logits)
        assert [s.selected for s in ta] == [s.selected for s in tb]
        ca, cb = reroute.cost(config, model, 16, 8), reroute.cost(mirrored, model, 16, 8)
        assert ca.scoring_flops == cb.scoring_flops and ca.kv_cache_bytes == cb.kv_cache_bytes
        if builtin == "remove":  # the monotone rule comes from the object too
            with pytest.raises(ValueError, match=r"^keep_ratios grow from 0.25 to 0.5 at decision layer 3: "):
                RoutingConfig(copy.name, (1, 3), (0.25, 0.5))
    finally:
        ACTIONS.unregister(copy.name)


def test_a_stage_that_repeats_a_pick_is_an_error_not_a_smaller_budget():
    """`VisionStage.image_features` refuses kept indices that are not strictly ascending (a repeated pick would
    silently let fewer tokens in than the stage's count)."""
    from tests.helpers.models import llava_batch, llava_prompt, tiny_llava

    from reroute.methods import StageImage, VisionStage

    class Repeating(VisionStage):
        name = "repeating"

        def reduce(self, model, params, inputs):
            tokens = torch.zeros(3, 4)
            return [StageImage(kept=torch.tensor([0, 5, 5]), tokens=tokens, grid=(4, 4))]

    model = tiny_llava()
    features = Repeating().image_features(model, {})
    with pytest.raises(RuntimeError, match="^vision stage 'repeating' kept token indices that are not strictly ascending$"):
        features(pixel_values=llava_batch([llava_prompt(1)])["pixel_values"])
