"""SparseVLM's score of the visual tokens (docs/semantics.md §21): the raters' attention rows.

Only the raters' query rows are projected (``(B, H, R, n)``, R raters), never the L x L map the
official code builds. SparseVLM+ (v2.0) adds two steps, both on by default here:

- **gravity correction**: each attention probability is divided by the rotary "weight" of its
  query-key pair, ``RoPE(1) . RoPE(1) / sqrt(head_dim)`` at the two tokens' positions (a function
  of their distance on LLaVA), removing RoPE's preference for nearby keys;
- **head selection**: per sample, the heads whose (corrected) rater-to-visual attention sums
  highest are kept (14 of LLaVA-1.5-7B's 32), the others dropped before the mean over heads.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from reroute.methods.attention import query_rows_attention, rotate
from reroute.runtime.adapter import RotaryFn


def rater_rows(raters: torch.Tensor, query_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, present)``, both ``(B, R)``: each sample's rater positions in increasing order,
    padded to the batch's largest count with the sample's query (``present`` False there)."""
    counts = raters.sum(dim=1)
    width = max(1, int(counts.max()))
    order = torch.sort((~raters).to(torch.int8), dim=1, stable=True).indices[:, :width]  # raters first, in order
    present = torch.arange(width, device=raters.device)[None, :] < counts[:, None]
    return torch.where(present, order, query_index[:, None]), present


def rope_weights(cos: torch.Tensor, sin: torch.Tensor, rows: torch.Tensor, apply_rotary: RotaryFn) -> torch.Tensor:
    """``(B, R, n)``: the all-ones query of each row against the all-ones key of every token, both
    rotated at their positions by the family's rotary function, over ``sqrt(head_dim)``."""
    batch, n, head_dim = cos.shape
    ones = torch.ones(batch, 1, n, head_dim, device=cos.device)
    rotated = rotate(apply_rotary, ones, cos.float(), sin.float())[:, 0]  # (B, n, hd)
    queries = rotated.gather(1, rows[..., None].expand(-1, -1, head_dim))  # (B, R, hd)
    return queries @ rotated.transpose(1, 2) / math.sqrt(head_dim)


def heads_kept(num_heads: int, head_fraction: float) -> int:
    """How many heads SparseVLM+ keeps: ``head_fraction`` of them, to the nearest (halves up), at least 1."""
    return max(1, min(num_heads, math.floor(num_heads * head_fraction + 0.5)))


def rater_scores(
    layer: nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_valid: torch.Tensor,
    query_index: torch.Tensor,
    raters: torch.Tensor,
    visual: torch.Tensor,
    apply_rotary: RotaryFn,
    head_fraction: float = 1.0,
    gravity: bool = False,
) -> torch.Tensor:
    """``(B, n)`` float32: the mean over raters and kept heads of the raters' causal attention rows.

    Args:
        layer, hidden, cos, sin, key_valid, query_index, apply_rotary: as ``last_token_attention``.
        raters: ``(B, n)`` bool, each sample's raters (`select_raters`).
        visual: ``(B, n)`` bool, the visual keys: the columns head selection sums over.
        head_fraction: the share of heads kept (1.0: every head, SparseVLM v1.5).
        gravity: divide by the rotary weights first (SparseVLM+).
    """
    rows, present = rater_rows(raters, query_index)
    probs = query_rows_attention(layer, hidden, cos, sin, key_valid, rows, apply_rotary)  # (B, H, R, n)
    if gravity:
        # slack rows of a compact view have zero rotary tables (weight 0): divide real keys only, so 0 stays 0
        weights = rope_weights(cos, sin, rows, apply_rotary).masked_fill(~key_valid[:, None, :], 1.0)
        probs = probs / weights[:, None]
    num_heads = probs.shape[1]
    kept = heads_kept(num_heads, head_fraction)
    if kept < num_heads:
        cells = (present[:, :, None] & visual[:, None, :]).float()  # (B, R, n): rater rows x visual columns
        mass = torch.einsum("bhrn,brn->bh", probs, cells)
        # a stable descending sort: equal sums keep the lower head
        heads = torch.sort(mass, dim=1, descending=True, stable=True).indices[:, :kept]
        probs = probs.gather(1, heads[:, :, None, None].expand(-1, -1, *probs.shape[2:]))
    weight = present.float() / present.sum(dim=1, keepdim=True).clamp(min=1).float()
    return torch.einsum("bhrn,br->bn", probs, weight) / kept
