"""SparseVLM's official tensor functions, carried into the tests (adapted only in imports).

Source: github.com/Gumpest/SparseVLMs at commit 26a5f48813c46cd1c7364160354e7fdd3febaa67 (main,
SparseVLM+ v2.0 merged in 9e376ce):
- `scaled_dot_product_attention`: llava/model/language_model/utils.py (the attention probabilities
  the sparse layers return);
- `attn_postprocess_topk`, `select_attn_head_by_sum`: llava/model/language_model/score.py;
- `select_text_raters` and `gravity_correction` are the statements of
  llava/model/language_model/modelling_sparse_llama.py lines 199-204 ("Select Text Raters") and
  243-251 ("Text-Visual Attention Gravity Correction"), wrapped in functions with the names they
  read as arguments.

"Imports": the module globals the official functions read (``RETAIN_TOKN``, ``layer_dict``,
``sparse_token_dict``) are set by `topk_mask` per call so the count is the test's, and
`OldRotary` / `apply_rotary_pos_emb` are transformers 4.37's rotary API (which the official code
calls) over the tiny model's own rotary module.
"""

from __future__ import annotations

import math

import torch

# ---------------------------------------------------------------- "imports": what the official code reads
RETAIN_TOKN = "test"
layer_dict: dict[int, int] = {}
sparse_token_dict: dict = {}


def rotate_half(x):  # transformers 4.37 modeling_llama
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, position_ids, unsqueeze_dim=1):  # transformers 4.37 modeling_llama
    cos = cos[position_ids].unsqueeze(unsqueeze_dim)
    sin = sin[position_ids].unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed


class OldRotary:
    """transformers 4.37's ``rotary_emb(x, seq_len) -> (cos, sin)`` of shape (seq_len, head_dim), from a 5.x rotary module."""

    def __init__(self, rotary):
        self.rotary = rotary

    def __call__(self, x, seq_len):
        cos, sin = self.rotary(x, torch.arange(seq_len)[None])
        return cos[0].to(x.dtype), sin[0].to(x.dtype)


class OldAttention:
    """What the official snippets read of ``decoder_layer.self_attn``: ``num_heads``, ``head_dim``, ``rotary_emb``."""

    def __init__(self, num_heads, head_dim, rotary):
        self.num_heads, self.head_dim, self.rotary_emb = num_heads, head_dim, OldRotary(rotary)


class OldLayer:
    def __init__(self, num_heads, head_dim, rotary):
        self.self_attn = OldAttention(num_heads, head_dim, rotary)


def topk_mask(self_attn_weights, v_token_start, v_token_num, text_token_start, t_token_idx, layer_idx, keep):
    """`attn_postprocess_topk` with the count table set to ``keep`` for this call."""
    layer_dict[layer_idx] = 0
    sparse_token_dict[RETAIN_TOKN] = [keep]
    return attn_postprocess_topk(self_attn_weights, v_token_start, v_token_num, text_token_start, t_token_idx, layer_idx)


# ---------------------------------------------------------------- official code (verbatim bodies)
def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None) -> torch.Tensor:
    L, S = query.size(-2), key.size(-2)
    scale_factor = 1 / math.sqrt(query.size(-1)) if scale is None else scale
    attn_bias = torch.zeros(L, S, dtype=query.dtype)
    if is_causal:
        assert attn_mask is None
        temp_mask = torch.ones(L, S, dtype=torch.bool).tril(diagonal=0)
        attn_bias.masked_fill_(temp_mask.logical_not(), float("-inf"))
        attn_bias.to(query.dtype)

    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn_bias.masked_fill_(attn_mask.logical_not(), float("-inf"))
        else:
            attn_bias += attn_mask
    attn_weight = query @ key.transpose(-2, -1) * scale_factor
    attn_weight += attn_bias.to(query.device)
    attn_weight = torch.softmax(attn_weight, dim=-1)
    attn_logits = attn_weight

    attn_weight = torch.dropout(attn_weight, dropout_p, train=True)
    return attn_weight @ value, attn_logits


def attn_postprocess_topk(self_attn_weights, v_token_start, v_token_num, text_token_start, t_token_idx, layer_idx):
    '''
    self_attn_weights: [B, H, L, L]
    '''
    self_attn_weights = self_attn_weights.mean(1) # B, L[Q], L[K]

    t_token_idx = t_token_idx[1] + text_token_start
    relation_vis_text = self_attn_weights[:, t_token_idx , v_token_start: v_token_start+v_token_num] # B, L2, L1

    relation_vis_text = relation_vis_text.mean(1) # B, L1

    relation_vis = relation_vis_text
    s_flag = True       # s_flag controls whether token merge is needed.

    sparse_token_list = sparse_token_dict[RETAIN_TOKN]

    if v_token_num != 0:
        mask = torch.zeros_like(relation_vis, dtype=bool)
        _, indices = torch.topk(relation_vis, min(sparse_token_list[layer_dict[layer_idx]], v_token_num - 1), dim=1)
        mask[0][indices] = 1
    else:
        mask = torch.ones_like(relation_vis_text, dtype=bool)
        s_flag = False
    return mask, s_flag, relation_vis_text


def select_attn_head_by_sum(self_attn_weights, t_token_idx, v_token_start, text_token_start):
    # [1,28,token_num,token_num] -> [28,text_token_num,visual_token_num]
    each_head_text_to_visual_attn = self_attn_weights[0][:, t_token_idx , v_token_start: text_token_start]
    # [28,text_token_num,visual_token_num] -> [28]
    sum_attn_per_head = each_head_text_to_visual_attn.sum((1,2))
    select_attn_head_idx = sum_attn_per_head.topk(14)[1]

    return self_attn_weights[:,select_attn_head_idx,:,:][:,:,:]


def select_text_raters(hidden_states, v_token_start, text_token_start):
    v_t = hidden_states[:, v_token_start: text_token_start, :]
    t_t = hidden_states[:, text_token_start: , :]
    m_v_t = v_t @ t_t.transpose(1, 2) # [1, 576, 53]
    m_v_t = m_v_t.softmax(2).mean(1) # [1, 53]
    t_token_idx = torch.where(m_v_t > m_v_t.mean())
    return t_token_idx


def gravity_correction(hidden_states, decoder_layer, attn_logits, position_ids):
    bs, seq = hidden_states.shape[:2] # idea1: Compute Bias
    num_heads = decoder_layer.self_attn.num_heads
    head_dim = decoder_layer.self_attn.head_dim
    query_states = hidden_states.new_ones(bs, seq, num_heads, head_dim).transpose(1, 2)
    key_states = hidden_states.new_ones(bs, seq, num_heads, head_dim).transpose(1, 2)
    cos, sin = decoder_layer.self_attn.rotary_emb(key_states, seq_len=position_ids.max().item() + 1)
    query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin, position_ids)
    rope_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(head_dim)
    attn_logits = attn_logits / rope_weights
    return attn_logits
