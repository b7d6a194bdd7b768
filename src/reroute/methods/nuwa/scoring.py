"""Nüwa stage 2: the score of each visual token at the decoder decision layer (docs/semantics.md §6).

Same arguments as ``reroute.methods.attention.last_token_attention`` (docs/semantics.md §2), one sample per row of
the batch, tokens in original order along ``n``:

- LLaVA-1.5: exactly docs/semantics.md §2, the head-mean attention of the last prompt token:
  ``llava_stage2_scores`` is ``last_token_attention``.
- Qwen2.5-VL: the attention rows of the last 3 prompt positions (the 3 last valid keys at or
  before ``query_index``: padding and slack are skipped), each causal (a row sees only valid
  keys at or before it), averaged over the 3 rows, then the maximum over heads (the
  reference: ``attn_weights[:, :, -3:, :].mean(dim=2).max(dim=1)``,
  Vscan/qwen/model/qwen2_5vl_nuwa.py line 846). A sample with fewer than 3 valid positions
  uses those it has.

Only the few query rows are projected; softmax in float32.
"""

from __future__ import annotations

import torch
from torch import nn

from reroute.runtime.adapter import RotaryFn
from reroute.methods.attention import last_token_attention, query_rows_attention

#: LLaVA's stage-2 rule is docs/semantics.md §2's
llava_stage2_scores = last_token_attention


def last_rows(key_valid: torch.Tensor, query_index: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the ``rows`` last valid positions at or before ``query_index``.

    Returns ``(index (B, rows) long, present (B, rows) bool)``, earliest first; where a sample
    has fewer, the missing leading rows repeat its query index and are marked absent.
    """
    batch, n = key_valid.shape
    positions = torch.arange(n, device=key_valid.device)
    eligible = key_valid & (positions[None] <= query_index[:, None])
    # rank from the end: 0 for the last eligible position, 1 for the one before, ...
    from_end = eligible.flip(1).long().cumsum(1).flip(1) - 1
    index = torch.empty(batch, rows, dtype=torch.long, device=key_valid.device)
    present = torch.zeros(batch, rows, dtype=torch.bool, device=key_valid.device)
    for r in range(rows):
        hit = eligible & (from_end == rows - 1 - r)
        present[:, r] = hit.any(dim=1)
        index[:, r] = torch.where(present[:, r], hit.int().argmax(dim=1), query_index)
    return index, present


def qwen_stage2_scores(
    layer: nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_valid: torch.Tensor,
    query_index: torch.Tensor,
    apply_rotary: RotaryFn,
    rows: int = 3,
) -> torch.Tensor:
    """Nüwa's Qwen2.5-VL stage-2 score: mean of the last ``rows`` query rows, then max over heads.

    Arguments as ``last_token_attention``; returns ``(B, n)`` float32 (0 on invalid keys).
    """
    index, present = last_rows(key_valid, query_index, rows)
    probs = query_rows_attention(layer, hidden, cos, sin, key_valid, index, apply_rotary)  # (B, H, R, n)
    weight = present.float() / present.sum(dim=1, keepdim=True).float()  # mean over the rows that exist
    return torch.einsum("bhrn,br->bhn", probs, weight).amax(dim=1)
