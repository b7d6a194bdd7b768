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

v1.5's recycling (`cluster_and_merge` and the statements around it) comes from another commit,
b9619e6 (branch v1.5): see the section at the end of this file.
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


# ================================================================ v1.5's recycling of pruned tokens
# Source: github.com/Gumpest/SparseVLMs at commit b9619e61a6f840d7aa9817eadd68bb5e84ce7b95 (branch v1.5;
# main 26a5f48 runs the same code without USE_VERSION):
# - `batch_index_select`, `index_points`, `cluster_and_merge`: llava/model/language_model/utils.py;
# - `recycle_pruned` is the statements of llava/model/language_model/modelling_sparse_llama.py lines
#   283-296 (from ``total_sparse_token_idx`` to the ``cluster_and_merge`` call), wrapped in a function
#   with the names they read as arguments, returning the recycled indices and the merged tokens;
# - `insert_merged` is the statements of lines 298-312 (the kept tokens, the merged ones after the kept
#   visual tokens, the position ids cut to the new length, the visual block's new extent), wrapped the
#   same way, returning what the loop carries on with.
# "Imports": `ein` stands in for ``import einops as ein`` (einops is not a dependency of this project):
# its `rearrange` implements the two patterns `cluster_and_merge` uses.


class ein:  # the official code's module alias
    @staticmethod
    def rearrange(x, pattern):
        return {"b l r -> b l () r": lambda t: t.unsqueeze(2), "b l r -> b () l r": lambda t: t.unsqueeze(1)}[pattern](x)


def  batch_index_select(x, idx):

    if len(x.size()) == 4:
        B, H, N, C = x.size()
        N_new = idx.size(1)
        offset = torch.arange(B, dtype=torch.long, device=x.device).view(B, 1) * N
        idx = idx + offset
        out = x.reshape(B*N, H, C)[idx.reshape(-1)].reshape(B, H, N_new, C)
        return out
    elif len(x.size()) == 3:
        # in this condition
        B, N, C = x.size()
        N_new = idx.size(1)
        offset = torch.arange(B, dtype=torch.long, device=x.device).view(B, 1) * N
        idx = idx + offset
        out = x.reshape(B*N, C)[idx.reshape(-1)].reshape(B, N_new, C)
        return out
    elif len(x.size()) == 2:
        B, N = x.size()
        N_new = idx.size(1)
        offset = torch.arange(B, dtype=torch.long, device=x.device).view(B, 1) * N
        idx = idx + offset
        out = x.reshape(B*N)[idx.reshape(-1)].reshape(B, N_new)
        return out
    else:
        raise NotImplementedError


def index_points(points, idx):
    """Sample features following the index.
    Returns:
        new_points:, indexed points data, [B, S, C]

    Args:
        points: input points data, [B, N, C]
        idx: sample index data, [B, S]
    """
    device = points.device
    B = points.shape[0]
    view_shape = list(idx.shape)
    view_shape[1:] = [1] * (len(view_shape) - 1)
    repeat_shape = list(idx.shape)
    repeat_shape[0] = 1
    batch_indices = torch.arange(B, dtype=torch.long).to(device).view(view_shape).repeat(repeat_shape)
    new_points = points[batch_indices, idx, :]
    return new_points


def cluster_and_merge(x, cluster_num):
    
    B, N, C = x.shape

    x1 = ein.rearrange(x, "b l r -> b l () r")
    x2 = ein.rearrange(x, "b l r -> b () l r")
    distance = (x1 - x2).norm(dim=-1, p=2)
    dist_matrix = distance / (C ** 0.5)        
    # get local density
    dist_nearest, index_nearest = torch.topk(dist_matrix, k=cluster_num, dim=-1, largest=False)
    density = (-(dist_nearest ** 2).mean(dim=-1)).exp()
    # add a little noise to ensure no tokens have the same density.
    density = density + torch.rand(
        density.shape, device=density.device, dtype=density.dtype) * 1e-6

    # get distance indicator
    mask = density[:, None, :] > density[:, :, None]
    mask = mask.type(x.dtype)
    dist_max = dist_matrix.flatten(1).max(dim=-1)[0][:, None, None]
    dist, index_parent = (dist_matrix * mask + dist_max * (1 - mask)).min(dim=-1)

    # select clustering center according to score
    score = dist * density
    _, index_down = torch.topk(score, k=cluster_num, dim=-1)        

    # assign tokens to the nearest center
    dist_matrix = index_points(dist_matrix, index_down)     

    idx_cluster = dist_matrix.argmin(dim=1)    

    # make sure cluster center merge to itself 
    idx_batch = torch.arange(B, device=x.device)[:, None].expand(B, cluster_num)
    idx_tmp = torch.arange(cluster_num, device=x.device)[None, :].expand(B, cluster_num)
    idx_cluster[idx_batch.reshape(-1), index_down.reshape(-1)] = idx_tmp.reshape(-1)

    # merge tokens

    B, N, C = x.shape
    device = dist_matrix.device
    idx_token = torch.arange(N)[None, :].repeat(B, 1).to(device)
    agg_weight = x.new_ones(B, N, 1)
    
    token_weight = x.new_ones(B, N, 1)
    # self_attn_weights = self_attn_weights.mean(1)
    # token_weight = self_attn_weights.sum(dim=1).exp().unsqueeze(2) 
    # B_weight,N_weigh,C_weight = token_weight.shape
    # token_weight = token_weight.reshape(B_weight*N_weigh, C_weight)[sparse_token_idx.reshape(-1)].reshape(B, N, 1)
    
    idx_batch = torch.arange(B, device=x.device)[:, None]
    idx = idx_cluster + idx_batch * cluster_num     

    all_weight = token_weight.new_zeros(B * cluster_num, 1)
    all_weight.index_add_(dim=0, index=idx.reshape(B * N),      
                            source=token_weight.reshape(B * N, 1))      
    all_weight = all_weight + 1e-6
    norm_weight = token_weight / all_weight[idx]       

    # average token features
    x_merged = x.new_zeros(B * cluster_num, C)
    source = x * norm_weight
    x_merged.index_add_(dim=0, index=idx.reshape(B * N),        
                        source=source.reshape(B * N, C).type(x.dtype))
    x_merged = x_merged.reshape(B, cluster_num, C)
    
    return x_merged


def recycle_pruned(layer_outputs, policy, pred_score_vis, relation_vis_text):
    total_sparse_token_idx = torch.where(policy == 0)[1].unsqueeze(0)  
    total_sparse_token = batch_index_select(layer_outputs[0], total_sparse_token_idx) 
    
    merge_token_idx_stage1 = torch.where(pred_score_vis==0)[1]
    merge_token_stage1 = relation_vis_text[0][merge_token_idx_stage1]
    merge_token_num_stage1 = int(merge_token_idx_stage1.shape[0] * 0.3 ) + 1 # Top 30%
    merge_token_stage2_idx = merge_token_stage1.topk(merge_token_num_stage1)[1]
   
    merge_token_stage2 = total_sparse_token[:,merge_token_stage2_idx,:]
    cluster_num = int(merge_token_stage2.shape[1] / 10) + 1       
    if (cluster_num == 0) :
        cluster_num = merge_token_stage2.shape[1]
    
    merge_sparse_token = cluster_and_merge(merge_token_stage2, cluster_num)  
    return merge_token_stage2_idx, merge_sparse_token


def insert_merged(layer_outputs, policy, pred_score_vis, merge_sparse_token, cluster_num, position_ids, v_token_start):
    select_token_idx = torch.where(policy == 1)[1].unsqueeze(0)  # B, L_new
    select_token = batch_index_select(layer_outputs[0], select_token_idx)
    select_vis_token_num = pred_score_vis.sum()
    select_and_merge_token = torch.cat((select_token[:,:v_token_start+select_vis_token_num,:] ,
            merge_sparse_token,
            select_token[:,v_token_start+select_vis_token_num:,:])
            ,dim=1
    )

    layer_outputs = (select_and_merge_token, layer_outputs[1])  # B, L, C
    position_ids = position_ids[:, :len(select_token_idx[0])+cluster_num]
    prev_decision = policy
    # update
    v_token_num = pred_score_vis.sum() + cluster_num # B == 1
    # print(layer_idx, v_token_num)
    text_token_start = v_token_start + v_token_num
    return layer_outputs, position_ids, v_token_num, text_token_start
