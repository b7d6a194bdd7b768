"""The scoring rule of FastV, PDrop and Reroute (docs/semantics.md §2), from one query row per sample.

The reference implementations materialise the full L x L attention map of the decision
layer; here only the last prompt token's query is projected, so memory stays O(L).

`query_rows_attention` is the same for several query rows per sample, per head (Nüwa's Qwen rule,
SparseVLM's raters). `rotate` applies a family's rotary function (which rotates a query-key pair) to one tensor;
Nüwa's stage-2 rows (`reroute.methods.nuwa.scoring`) use it too.
"""

from __future__ import annotations

import torch
from torch import nn

from reroute.runtime.adapter import RotaryFn


def last_token_attention(
    layer: nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_valid: torch.Tensor,
    query_index: torch.Tensor,
    apply_rotary: RotaryFn,
) -> torch.Tensor:
    """Head-mean attention of each sample's query row over its keys, in float32.

    Args:
        layer: the decision layer (its input norm and q/k projections are used, as the
            layer itself would use them).
        hidden: ``(B, n, D)`` hidden states entering the layer, for every key token.
        cos, sin: ``(B, n, head_dim)`` rotary tables at the tokens' original positions.
        key_valid: ``(B, n)`` bool, which tokens are keys (padding and slack are not).
        query_index: ``(B,)`` index (into ``n``) of each sample's query token.

    Returns:
        ``(B, n)`` float32 attention probabilities (0 on invalid keys), averaged over heads.
    """
    attn = layer.self_attn
    batch, n, _ = hidden.shape
    head_dim = attn.head_dim
    rows = torch.arange(batch, device=hidden.device)

    x = layer.input_layernorm(hidden)
    q = attn.q_proj(x[rows, query_index]).view(batch, 1, -1, head_dim)  # (B, 1, H, hd)
    k = attn.k_proj(x).view(batch, n, -1, head_dim)  # (B, n, KV, hd)
    if hasattr(attn, "q_norm"):  # QK-norm families (Qwen3-style)
        q, k = attn.q_norm(q), attn.k_norm(k)
    # (B, heads, tokens, hd); the keys made contiguous so the rotary's elementwise ops run on dense memory
    q, k = q.transpose(1, 2), k.transpose(1, 2).contiguous()
    q_cos, q_sin = cos[rows, query_index].unsqueeze(1), sin[rows, query_index].unsqueeze(1)
    q = rotate(apply_rotary, q, q_cos, q_sin)
    k = rotate(apply_rotary, k, cos, sin)

    kv_heads = k.shape[1]
    q = q.float().view(batch, kv_heads, -1, head_dim)  # (B, KV, H / KV, hd): query head h reads key head h // (H / KV)
    logits = torch.einsum("bgrd,bgnd->bgrn", q, k.float()).reshape(batch, -1, n) * attn.scaling  # (B, H, n)
    logits = logits.masked_fill(~key_valid[:, None, :], float("-inf"))
    return logits.softmax(dim=-1).mean(dim=1)


def rotate(apply_rotary: RotaryFn, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` (``(B, heads, n, hd)``) rotated by the family's ``apply_rotary(q, k, cos, sin)``
    (`reroute.runtime.adapter.RotaryFn`) with the tables ``cos`` / ``sin``.

    That function rotates a pair with the same tables; passing ``x`` twice would rotate it
    twice. The second operand here is a one-head, one-token slice of ``x`` (broadcast against
    the tables it costs one head's worth), and its result is discarded.
    """
    return apply_rotary(x, x[:, :1, :1], cos, sin)[0]


def query_rows_attention(
    layer: nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_valid: torch.Tensor,
    query_rows: torch.Tensor,
    apply_rotary: RotaryFn,
) -> torch.Tensor:
    """Per head, the causal attention rows of the given query positions, float32.

    Args:
        layer, hidden, cos, sin, key_valid, apply_rotary: as ``last_token_attention``.
        query_rows: ``(B, R)`` long indices into ``n``.

    Returns:
        ``(B, H, R, n)`` probabilities; row ``r`` is 0 on invalid keys and on keys after
        ``query_rows[:, r]``.
    """
    attn = layer.self_attn
    batch, n, _ = hidden.shape
    head_dim = attn.head_dim
    num_rows = query_rows.shape[1]
    rows = torch.arange(batch, device=hidden.device)[:, None]

    x = layer.input_layernorm(hidden)
    q = attn.q_proj(x[rows, query_rows]).view(batch, num_rows, -1, head_dim).transpose(1, 2)  # (B, H, R, hd)
    k = attn.k_proj(x).view(batch, n, -1, head_dim).transpose(1, 2).contiguous()  # (B, KV, n, hd)
    if hasattr(attn, "q_norm"):  # QK-norm families (Qwen3-style): the norm acts on head_dim
        q, k = attn.q_norm(q), attn.k_norm(k)
    q = rotate(apply_rotary, q, cos[rows, query_rows], sin[rows, query_rows])
    k = rotate(apply_rotary, k, cos, sin)

    kv_heads = k.shape[1]
    q = q.float().reshape(batch, kv_heads, -1, num_rows, head_dim)  # query head h reads key head h // (H / KV)
    logits = torch.einsum("bgtrd,bgnd->bgtrn", q, k.float()).reshape(batch, -1, num_rows, n) * attn.scaling
    positions = torch.arange(n, device=hidden.device)
    visible = key_valid[:, None, :] & (positions[None, None, :] <= query_rows[:, :, None])  # (B, R, n)
    logits = logits.masked_fill(~visible[:, None], float("-inf"))
    return logits.softmax(dim=-1)
