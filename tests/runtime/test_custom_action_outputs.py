"""``output_hidden_states`` / ``output_attentions`` of a registered custom action follow the action's own
rule (docs/semantics.md §3), not a built-in one: each layer's layout is the one the engine ran it on.

The custom action is ``reroute`` with an anchor: each sample's first visual token runs every stage and
never competes. The built-in rule (text and the selected tokens) would leave the anchor out of every
stage after a decision. The reference below is written from that rule alone, in lists, one sample at a time.
"""

from __future__ import annotations

import pytest
import torch
from tests.helpers.harness import decoder_inputs, rotary_positions, visual_mask
from tests.helpers.models import FAMILIES
from tests.helpers.reference import merged_rotary, reference_scores

import reroute
from reroute import RoutingConfig
from reroute.methods import ACTIONS, register_action
from reroute.methods.action import Reroute
from reroute.runtime.compat import CACHE_KEYWORD

CONFIG_LAYERS, CONFIG_RATIOS = (1, 3, 4), (0.3, 0.5, 0.2)


def _anchor(visual: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool: each sample's first visual token."""
    return visual & (visual.cumsum(dim=1) == 1)


class AnchoredReroute(Reroute):
    """Reroute, except that each sample's first visual token runs every stage and never competes."""

    name = "anchored_reroute_test"

    def candidates(self, visual, active):
        return visual & ~_anchor(visual)

    def next_active(self, visual, active, chosen):
        return ~visual | chosen | _anchor(visual)

    def num_candidates(self, num_visual, kept_before):
        return max(num_visual - 1, 0)


@pytest.fixture
def anchored():
    register_action(AnchoredReroute)
    try:
        yield RoutingConfig(AnchoredReroute.name, CONFIG_LAYERS, CONFIG_RATIOS)
    finally:
        ACTIONS.unregister(AnchoredReroute.name)


def _eager_mask(active: list[int], length: int, dtype: torch.dtype) -> torch.Tensor:
    """Causal mask among the active tokens; an inactive token sees only itself (its output is discarded)."""
    allowed = torch.eye(length, dtype=torch.bool)
    for i in active:
        for j in active:
            if j <= i:
                allowed[i, j] = True
    return torch.zeros(1, 1, length, length, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


@torch.no_grad()
def anchored_reference(text_model, positions, embeds, visual: list[bool], config, prompt_length: int):
    """One unpadded sample through the anchored rule: per layer its full-length output, its attention
    weights ``(H, L, L)`` and its active positions; the decisions are taken on the first ``prompt_length``
    tokens (the ones after them are text, which always runs)."""
    length = embeds.shape[0]
    if positions.ndim == 2 and "mrope_section" in (getattr(text_model.config, "rope_parameters", None) or {}):
        positions = positions[None].expand(3, -1, -1)
    tables = text_model.rotary_emb(embeds[None], positions)
    cos, sin = (merged_rotary(text_model.config, t)[0] for t in tables)
    visual_positions = [j for j in range(prompt_length) if visual[j]]
    anchor = visual_positions[:1]
    candidates = visual_positions[1:]
    active = list(range(length))
    states, weights, actives = [], [], []
    h = embeds.clone()
    for i, layer in enumerate(text_model.layers):
        if i in config.decision_layers:
            # the scoring row is the prompt's last token; every prompt token is a key (as reroute)
            keys = list(range(prompt_length))
            scores = reference_scores(layer, h[:prompt_length], cos[:prompt_length], sin[:prompt_length], keys)
            k = config.keep_counts(len(visual_positions))[config.decision_layers.index(i)]
            chosen = sorted(candidates, key=lambda j: (-scores[j], j))[:k]
            active = [j for j in range(length) if not visual[j] or j in chosen or j in anchor]
        hook = layer.self_attn.register_forward_hook(lambda m, a, out: weights.append(out[1][0]))
        try:
            out = layer(h[None], attention_mask=_eager_mask(active, length, h.dtype), position_embeddings=tables)
        finally:
            hook.remove()
        out = (out[0] if isinstance(out, tuple) else out)[0]
        ran = torch.zeros(length, dtype=torch.bool)
        ran[active] = True
        h = torch.where(ran[:, None], out, h)  # a token that did not run the layer keeps its state
        states.append(h)
        actives.append(ran)
    return states, weights, actives


@pytest.mark.parametrize("family_name", ["llava", "qwen2_5_vl"])
@torch.no_grad()
def test_hidden_states_and_attentions_follow_a_custom_actions_layout(family_name, anchored):
    family = FAMILIES[family_name]
    model = family.make_model(attn="eager")
    inputs = family.make_batch([family.make_prompt(2, size=0, seed=0)])
    length = inputs["input_ids"].shape[1]
    with reroute.apply(model, anchored) as handle:
        out = model(**inputs, output_hidden_states=True, output_attentions=True, use_cache=False)
        trace = handle.trace
    visual = visual_mask(model, inputs)[0].tolist()
    captured = decoder_inputs(model, inputs)
    text_model = model.model.language_model
    positions = rotary_positions(captured, 0, length, 0)
    states, weights, actives = anchored_reference(
        text_model, positions, captured["inputs_embeds"][0], visual, anchored, length
    )
    anchor = visual.index(True)
    assert all(anchor not in selected for selected in trace[0].selected)  # the anchor never competes
    assert all(bool(a[anchor]) for a in actives)  # and runs every layer
    assert len(out.hidden_states) == len(states) + 1
    for i, state in enumerate(states[:-1]):
        torch.testing.assert_close(out.hidden_states[i + 1][0], state, atol=2e-5, rtol=0)
    torch.testing.assert_close(out.hidden_states[-1][0], text_model.norm(states[-1][None])[0], atol=2e-5, rtol=0)
    for ours, ref, active in zip(out.attentions, weights, actives):
        pair = active[:, None] & active[None, :]
        torch.testing.assert_close(ours[0][:, pair], ref[:, pair], atol=2e-5, rtol=0)
        assert not ours[0][:, ~pair].any()  # rows and columns of the tokens that did not run are 0


@torch.no_grad()
def test_decode_step_attentions_follow_a_custom_actions_layout(anchored):
    """A decode step's rows cover each layer's cached prompt positions at their original places."""
    family = FAMILIES["llava"]
    model = family.make_model(attn="eager")
    inputs = family.make_batch([family.make_prompt(2, size=0, seed=1)])
    length = inputs["input_ids"].shape[1]
    token = torch.tensor([[7]])
    with reroute.apply(model, anchored):
        prefill = model(**inputs, use_cache=True)
        step = model(
            input_ids=token,
            attention_mask=torch.ones(1, length + 1, dtype=torch.long),
            **{CACHE_KEYWORD: prefill.past_key_values},
            output_attentions=True,
            output_hidden_states=True,
        )
    extended = dict(inputs, input_ids=torch.cat([inputs["input_ids"], token], dim=1))
    extended["attention_mask"] = torch.ones_like(extended["input_ids"])
    captured = decoder_inputs(model, extended)
    visual = visual_mask(model, extended)[0].tolist()
    text_model = model.model.language_model
    positions = rotary_positions(captured, 0, length + 1, 0)
    states, weights, actives = anchored_reference(
        text_model, positions, captured["inputs_embeds"][0], visual, anchored, length
    )
    for ours, ref, active in zip(step.attentions, weights, actives):
        assert ours.shape == (1, ref.shape[0], 1, length + 1)
        torch.testing.assert_close(ours[0][:, 0, active], ref[:, -1, active], atol=2e-5, rtol=0)
        assert not ours[0][:, 0, ~active].any()
    for ours, state in zip(step.hidden_states[1:-1], states):
        torch.testing.assert_close(ours[0, -1], state[-1], atol=2e-5, rtol=0)
