"""SparseVLM v1.5 with recycling, the whole prefill on a tiny LLaVA: the slow reference
(tests/helpers/sparsevlm_v15_reference.py: our rater selection, v1.5 scores, `recycle`, insertion
and renumbering) against a loop driven by the official code of b9619e6 (tests/methods/sparsevlm/
official.py: rater statements, `attn_postprocess_topk`, the recycling and insertion statements,
`cluster_and_merge`) around the same decoder layers. At every decision: the same kept tokens (prompt
positions and earlier merged tokens), the same merged tokens; after the last layer the same
sequence length, positions and states. Decode steps at the official positions (each layer's cache
length) equal the reference with the decoded tokens appended to every layer's sequence.

The engine does not run recycling (docs/semantics.md §21); this fixes what it will have to equal.
"""

from __future__ import annotations

import pytest
import torch
from tests.helpers.harness import decoder_inputs
from tests.helpers.models import LLAVA_IMAGE_TOKEN, llava_batch, llava_prompt
from tests.helpers.reference import _mask
from tests.helpers.sparsevlm_v15_reference import Token, recycling_forward
from tests.methods.sparsevlm import official
from tests.methods.sparsevlm.test_sparsevlm_official import official_attention, tiny_llava32
from transformers import DynamicCache

from reroute.methods.sparsevlm.raters import select_raters

DECISION_LAYERS = (2, 3, 5)  # the official pruning layers 1, 2, 4 of the tiny 6-layer decoder


def official_layer(text_model, layer, hidden, position_ids, cache=None):
    """A decoder layer as the official loop calls it: causal, at the loop's ``position_ids``,
    appending to ``cache`` (a `DynamicCache`) when given."""
    n = hidden.shape[1]
    mask = _mask(list(range(n)), n, text_model.config._attn_implementation, hidden.dtype)
    tables = text_model.rotary_emb(hidden, position_ids)
    out = layer(hidden, attention_mask=mask, position_embeddings=tables, cache=cache, use_cache=cache is not None)
    return out[0] if isinstance(out, tuple) else out


def official_decode(text_model, cache, embeds):
    """Decode steps as the official attention runs them: one token at a time, at layer ``i`` at the
    position ``cache.get_usable_length(..., i)`` (the layer's cache length), attending to every entry."""
    outs = []
    for e in embeds:
        h = e[None, None]
        for i, layer in enumerate(text_model.layers):
            position_ids = torch.tensor([[cache.get_seq_length(i)]])
            out = layer(h, attention_mask=None, position_embeddings=text_model.rotary_emb(h, position_ids), cache=cache, use_cache=True)
            h = out[0] if isinstance(out, tuple) else out
        outs.append(text_model.norm(h)[0, 0])
    return torch.stack(outs)


def official_forward(text_model, embeds, prefix, num_visual, keep_counts, seed, cache=None):
    """The official sparse forward's inference loop (batch 1) around our tiny decoder's layers
    (the sparse layer runs, and caches, the whole sequence; its output is pruned)."""
    hidden = embeds[None]
    position_ids = torch.arange(embeds.shape[0])[None]
    v_token_start, v_token_num, text_token_start = prefix, num_visual, prefix + num_visual
    t_token_idx = official.select_text_raters(hidden, v_token_start, text_token_start)
    block = [Token(position=p, visual=True) for p in range(prefix, prefix + num_visual)]  # who is in the visual block
    pruning = {d - 1: s for s, d in enumerate(DECISION_LAYERS)}
    kept, merged_all = [], []
    for layer_idx, layer in enumerate(text_model.layers):
        out = official_layer(text_model, layer, hidden, position_ids, cache)
        if layer_idx in pruning:
            s = pruning[layer_idx]
            probs = official_attention(layer, hidden, position_ids, text_model.rotary_emb)
            pred_score_vis, s_flag, relation_vis_text = official.topk_mask(
                probs, v_token_start, v_token_num, text_token_start, t_token_idx, layer_idx, keep_counts[s]
            )
            policy = torch.ones(1, out.shape[1])
            policy[:, v_token_start:text_token_start] = pred_score_vis.float()
            torch.manual_seed(seed)  # cluster_and_merge's density noise
            _, merged = official.recycle_pruned((out,), policy, pred_score_vis, relation_vis_text)
            cluster_num = merged.shape[1]
            (out, _), position_ids, v_token_num, text_token_start = official.insert_merged(
                (out, None), policy, pred_score_vis, merged, cluster_num, position_ids, v_token_start
            )
            block = [t for t, m in zip(block, pred_score_vis[0].tolist()) if m]
            kept.append(list(block))
            block += [Token(merged=(s, c), visual=True) for c in range(cluster_num)]
            merged_all.append(merged[0])
        hidden = out
    assert position_ids.tolist() == [list(range(hidden.shape[1]))]  # renumbered: 0..n-1 after every cut
    return text_model.norm(hidden)[0], kept, merged_all


@pytest.mark.parametrize("seed", range(4))
@torch.no_grad()
def test_recycling_prefill_equals_the_official_loop(seed):
    model = tiny_llava32(seed=3)
    text_model = model.model.language_model
    prompt = llava_prompt(1, text_before=2 + seed % 3, text_after=3 + seed, seed=seed)
    embeds = decoder_inputs(model, llava_batch([prompt]))["inputs_embeds"][0]
    visual = [t == LLAVA_IMAGE_TOKEN for t in prompt.ids]
    prefix, num_visual = visual.index(True), sum(visual)
    keep_counts = ((12, 8, 4), (10, 9, 2), (15, 3, 1), (6, 6, 6))[seed]
    raters = select_raters(embeds[None], torch.tensor([visual]), torch.ones(1, len(visual), dtype=torch.bool))[0].tolist()

    ours, sequence, record = recycling_forward(text_model, embeds, visual, raters, DECISION_LAYERS, keep_counts)
    theirs, kept, merged = official_forward(text_model, embeds, prefix, num_visual, keep_counts, seed)

    strip = lambda tokens: [(t.position, t.merged) for t in tokens]  # noqa: E731
    assert [strip(k) for k in record.kept] == [strip(k) for k in kept]
    for a, b in zip(record.merged, merged):
        assert a.shape == b.shape
        assert float((a - b).abs().max()) < 1e-5
    assert ours.shape == theirs.shape and len(sequence) == theirs.shape[0]
    assert float((ours - theirs).abs().max()) < 1e-5
    # the counts: k_s kept plus int((int(P * 0.3) + 1) / 10) + 1 merged per decision, recycled again later
    assert record.lengths[-1] == len(visual) - num_visual + keep_counts[-1] + 1


@torch.no_grad()
def test_decode_positions_continue_each_layers_sequence():
    """Greedy-style decode steps of the official code (position = the layer's cache length) equal
    the reference with the decoded tokens appended (they continue each layer's sequence)."""
    model = tiny_llava32(seed=3)
    text_model = model.model.language_model
    prompt = llava_prompt(1, text_before=3, text_after=4, seed=7)
    embeds = decoder_inputs(model, llava_batch([prompt]))["inputs_embeds"][0]
    visual = [t == LLAVA_IMAGE_TOKEN for t in prompt.ids]
    raters = select_raters(embeds[None], torch.tensor([visual]), torch.ones(1, len(visual), dtype=torch.bool))[0].tolist()
    keep_counts = (9, 5, 2)
    new_tokens = text_model.embed_tokens(torch.tensor([7, 11, 13]))
    cache = DynamicCache(config=text_model.config)
    official_forward(text_model, embeds, visual.index(True), sum(visual), keep_counts, seed=0, cache=cache)
    lengths = [cache.get_seq_length(i) for i in range(len(text_model.layers))]
    assert len(set(lengths)) == 4  # the prompt, then three pruned lengths: per-layer positions differ
    theirs = official_decode(text_model, cache, new_tokens)
    ours, _, _ = recycling_forward(text_model, embeds, visual, raters, DECISION_LAYERS, keep_counts, appended=new_tokens)
    assert float((ours[-3:] - theirs).abs().max()) < 1e-5
