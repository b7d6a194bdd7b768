"""SparseVLM against its official tensor functions (tests/methods/sparsevlm/official.py, source commit
named there), through the real engine: at every decision the official code, run on the states the
routed forward had at the scoring layer, keeps the same visual tokens and gives the same scores.

The routed forward's states are re-derived independently by the slow reference
(tests/helpers/reference.py) from the engine's own decisions; the official functions then score
the tokens active at the scoring layer (``remove``: the survivors, as the official code prunes
them; ``reroute``: the whole prompt, our definition) at their original positions (v2.0 keeps
position ids). The decoder has 32 heads so that SparseVLM+'s ``topk(14)`` head selection runs as
published.
"""

from __future__ import annotations

import pytest
import torch
from tests.helpers.harness import decoder_inputs
from tests.helpers.models import LLAVA_IMAGE_TOKEN, llava_batch, llava_prompt
from tests.helpers.reference import reference_forward
from tests.methods.sparsevlm import official
from transformers.models.llama.modeling_llama import repeat_kv

import reroute
from reroute import RoutingConfig
from reroute.backbones.released import build_llava, llava_config

NUM_HEADS = 32
SEEDS = range(6)
#: SparseVLM+ (v2.0) as published, and the v1.5 scoring rule (every head, no gravity correction)
VERSIONS = {"v2.0": {}, "v1.5": {"head_fraction": 1.0, "gravity": 0}}


def tiny_llava32(seed: int = 0):
    """LLaVA-1.5's architecture with 32 attention heads (LLaVA-1.5-7B's count; head_dim 4)."""
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
        projection_dim=32,
    )
    text = dict(
        vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=6, num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_HEADS, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    config = llava_config(text, vision, image_token_id=LLAVA_IMAGE_TOKEN, vision_feature_select_strategy="default",
                          vision_feature_layer=-2)  # fmt: skip
    return build_llava(config, seed=seed)


def official_attention(layer, hidden, position_ids, rotary):
    """The probabilities LlamaDynamicvitSdpaAttention.forward (v2.0) returns at a sparse layer:
    its projections, transformers 4.37's rotary at the kept position ids, the official SDPA."""
    attn = layer.self_attn
    bsz, q_len, _ = hidden.shape
    x = layer.input_layernorm(hidden)
    query_states = attn.q_proj(x).view(bsz, q_len, -1, attn.head_dim).transpose(1, 2)
    key_states = attn.k_proj(x).view(bsz, q_len, -1, attn.head_dim).transpose(1, 2)
    value_states = attn.v_proj(x).view(bsz, q_len, -1, attn.head_dim).transpose(1, 2)
    cos, sin = official.OldRotary(rotary)(value_states, seq_len=position_ids.max().item() + 1)
    query_states, key_states = official.apply_rotary_pos_emb(query_states, key_states, cos, sin, position_ids)
    groups = query_states.shape[1] // key_states.shape[1]
    key_states, value_states = repeat_kv(key_states, groups), repeat_kv(value_states, groups)
    _, probs = official.scaled_dot_product_attention(query_states, key_states, value_states, is_causal=True)
    return probs


def official_decision(text_model, states, embeds, visual, active, keep, layer_idx, version):
    """Official selection (original positions) and scores of one decision, on one unpadded sample."""
    positions = torch.tensor(sorted(active))
    hidden = states[positions][None]
    vis_positions = [j for j in sorted(active) if visual[j]]
    v_token_start = sum(1 for j in active if j < vis_positions[0])
    v_token_num = len(vis_positions)
    text_token_start = v_token_start + v_token_num
    first, last = visual.index(True), len(visual) - 1 - visual[::-1].index(True)
    t_token_idx = official.select_text_raters(embeds[None], first, last + 1)  # once, on the decoder's input
    layer = text_model.layers[layer_idx]
    probs = official_attention(layer, hidden, positions[None], text_model.rotary_emb)
    if version == "v2.0":
        old_layer = official.OldLayer(NUM_HEADS, layer.self_attn.head_dim, text_model.rotary_emb)
        probs = official.gravity_correction(hidden, old_layer, probs, positions[None])
        cur_text_token_idx = t_token_idx[1] + text_token_start
        probs = official.select_attn_head_by_sum(probs, cur_text_token_idx, v_token_start, text_token_start)
    mask, _, relation = official.topk_mask(probs, v_token_start, v_token_num, text_token_start, t_token_idx, layer_idx, keep)
    kept = tuple(p for p, m in zip(vis_positions, mask[0].tolist()) if m)
    return kept, relation[0]


@pytest.mark.parametrize("version", sorted(VERSIONS))
@pytest.mark.parametrize("action", ["remove", "reroute"])
@torch.no_grad()
def test_selection_and_scores_equal_the_official_code(action, version):
    model = tiny_llava32(seed=3)
    text_model = model.model.language_model
    config = RoutingConfig(action, (2, 3, 5), (0.75, 0.5, 0.25), scorer="sparsevlm", scorer_params=VERSIONS[version])
    worst = 0.0
    for seed in SEEDS:
        prompt = llava_prompt(1, text_before=2 + seed % 3, text_after=3 + seed, seed=seed)
        inputs = llava_batch([prompt])
        with reroute.apply(model, config, record_scores=True) as handle:
            model(**inputs)
        sample = handle.trace.samples[0]
        captured = decoder_inputs(model, inputs)
        embeds = captured["inputs_embeds"][0]
        visual = [t == LLAVA_IMAGE_TOKEN for t in prompt.ids]
        states: list[torch.Tensor] = []
        decisions = [list(s) for s in sample.selected]
        reference_forward(text_model, torch.arange(len(visual))[None], embeds, visual, config, decisions=decisions, states=states)
        everything = set(range(len(visual)))
        for s, d in enumerate(config.decision_layers):
            layer_idx = d - 1  # SparseVLM scores with the layer whose output it prunes
            entering = embeds if layer_idx == 0 else states[layer_idx - 1]
            if action == "remove" and s > 0:
                active = {j for j in everything if not visual[j]} | set(sample.selected[s - 1])
            else:
                active = everything
            keep = config.keep_counts(sum(visual))[s]
            kept, relation = official_decision(text_model, entering, embeds, visual, active, keep, layer_idx, version)
            assert sample.selected[s] == kept, (seed, s)
            ours = sample.scores[s]
            assert ours.positions.tolist() == sorted(p for p in active if visual[p])
            worst = max(worst, float((ours.scores - relation).abs().max() / relation.abs().max()))
    assert worst < 1e-5, worst  # relative to the largest score (gravity-corrected scores reach ~4)


def test_raters_equal_the_official_selection():
    """`select_raters` == the official rater statements on 200 random one-image prompts (float32),
    also in a padded batch; a pool whose relevances are all equal rates with every token (ours: the
    official code would select none and average an empty set)."""
    from reroute.methods.sparsevlm.raters import select_raters

    g = torch.Generator().manual_seed(0)
    for case in range(200):
        prefix, image, text = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 30, (1,), generator=g)), int(torch.randint(2, 12, (1,), generator=g))
        length, dim = prefix + image + text, 8
        embeds = torch.randn(1, length, dim, generator=g) * (1 + case % 3)
        visual = torch.zeros(1, length, dtype=torch.bool)
        visual[0, prefix : prefix + image] = True
        t_token_idx = official.select_text_raters(embeds, prefix, prefix + image)
        expected = [prefix + image + int(i) for i in t_token_idx[1]]
        pad = case % 4  # left padding in front of the same sample
        padded = torch.cat([torch.randn(1, pad, dim, generator=g), embeds], dim=1)
        valid = torch.cat([torch.zeros(1, pad, dtype=torch.bool), torch.ones(1, length, dtype=torch.bool)], dim=1)
        got = select_raters(padded, torch.cat([torch.zeros(1, pad, dtype=torch.bool), visual], dim=1), valid)
        assert (torch.nonzero(got[0]).flatten() - pad).tolist() == expected
    one_text = select_raters(torch.randn(1, 5, 4), torch.tensor([[False, True, True, True, False]]), torch.ones(1, 5, dtype=torch.bool))
    assert one_text.tolist() == [[False, False, False, False, True]]
