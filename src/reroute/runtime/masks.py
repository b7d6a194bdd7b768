"""Attention masks for compact sequences, in the format each attention implementation takes.

Active tokens are kept in original order, so causality over the compact index is causality
over the original positions. Every query row may at least see itself: a row with no key at
all (slack) would give NaN under SDPA, and NaN values leak through zero weights.
"""

from __future__ import annotations

import torch

SUPPORTED_ATTENTION = ("sdpa", "eager")


def prefill_mask(key_valid: torch.Tensor) -> torch.Tensor:
    """``(B, 1, n, n)`` bool: causal over the compact order, restricted to valid keys."""
    n = key_valid.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=key_valid.device).tril()
    mask = causal[None] & key_valid[:, None, :]
    return (mask | torch.eye(n, dtype=torch.bool, device=key_valid.device))[:, None]


def decode_mask(prompt_keys: torch.Tensor, decoded_valid: torch.Tensor, num_new: int) -> torch.Tensor:
    """``(B, 1, T, n + P)`` bool for ``T`` new tokens over a layer's cache plus themselves.

    Args:
        prompt_keys: ``(B, n)`` which cached prompt entries of this layer are real keys.
        decoded_valid: ``(B, P)`` padding mask of the tokens after the prompt (cached and new; P >= T).
        num_new: ``T``, the tokens of this step (the last ``T`` of ``decoded_valid``).
    """
    past = decoded_valid.shape[1] - num_new
    query = torch.arange(num_new, device=decoded_valid.device)[:, None] + past
    key = torch.arange(decoded_valid.shape[1], device=decoded_valid.device)[None, :]
    decoded = (key <= query)[None] & decoded_valid[:, None, :]
    prompt = prompt_keys[:, None, :].expand(-1, num_new, -1)
    mask = torch.cat([prompt, decoded], dim=-1)
    mask[:, :, prompt_keys.shape[1] :] |= (key == query)[None]  # a new token always sees itself
    return mask[:, None]


def to_implementation(mask: torch.Tensor, implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """SDPA takes the boolean mask; eager attention adds a float mask to its logits."""
    if implementation == "sdpa":
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def compact_prefill_mask(key_valid: torch.Tensor, implementation: str, dtype: torch.dtype) -> torch.Tensor | None:
    """The prefill mask of a compact sequence in ``implementation``'s format.

    ``None`` under SDPA when every key is valid (no padding, no slack): the mask is then plain
    causal, and SDPA's ``is_causal`` kernel skips the masked half instead of computing it.
    Prefill queries and keys are the same tokens, so its top-left causal alignment is right.
    """
    if implementation == "sdpa" and bool(key_valid.all()):
        return None
    return to_implementation(prefill_mask(key_valid), implementation, dtype)


def compact_decode_mask(
    prompt_keys: torch.Tensor, decoded_valid: torch.Tensor, num_new: int, implementation: str, dtype: torch.dtype
) -> torch.Tensor | None:
    """`decode_mask` in ``implementation``'s format; ``None`` under SDPA for one new token that
    may see every cached key (SDPA then attends to all of them, as the mask would say)."""
    if implementation == "sdpa" and num_new == 1 and bool(prompt_keys.all()) and bool(decoded_valid.all()):
        return None
    return to_implementation(decode_mask(prompt_keys, decoded_valid, num_new), implementation, dtype)


# ----------------------------------------------------------------------------- custom 4-D masks (docs/semantics.md §18)
def _allowed(mask: torch.Tensor) -> torch.Tensor | None:
    """``(B, q, kv)`` bool: which key each query may see under a ``(B, 1, q, kv)`` mask; None when the
    mask says more than seen / not seen (several heads, additive biases other than 0 and the minimum)."""
    if mask.ndim != 4 or mask.shape[1] != 1:
        return None
    if mask.dtype == torch.bool:
        return mask[:, 0]
    if not mask.is_floating_point():
        return None
    allowed = mask[:, 0] == 0
    unseen = mask[:, 0] <= torch.finfo(mask.dtype).min / 2  # the dtype's minimum, or -inf
    return allowed if bool((allowed | unseen).all()) else None


def _padding_and_allowed(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(validity (B, kv), allowed (B, q, kv))`` of a 4-D mask whose ``q`` queries are its last ``q`` keys.

    A query is real when it sees itself (the diagonal): padding queries do not. Of the keys, the
    queries' own positions are valid when they are real queries, and the earlier (cached) positions
    when some real query sees them."""
    allowed = _allowed(mask)
    if allowed is None:
        return None
    num_queries, num_keys = allowed.shape[-2:]
    past = num_keys - num_queries
    if past < 0:
        return None
    rows = torch.arange(num_queries, device=mask.device)
    real = allowed[:, rows, rows + past]  # (B, q)
    validity = torch.zeros(allowed.shape[0], num_keys, dtype=torch.bool, device=mask.device)
    validity[:, :past] = (allowed[:, :, :past] & real[:, :, None]).any(dim=1)
    validity[:, past:] = real
    return validity, allowed


def padding_from_4d(mask: torch.Tensor) -> torch.Tensor | None:
    """The 2-D padding mask ``(B, kv)`` (long, 1 on real tokens) a ``(B, 1, q, kv)`` mask was built from, or None.

    It was built from one when every real query sees exactly the real keys up to itself (causal over
    the row's padding, as transformers builds its mask from a 2-D one) and every padding query sees
    either the same or nothing. Then the 2-D mask gives the same attention on every real token, and
    the engine gathers it per stage and per layer's cache as it gathers any 2-D mask."""
    found = _padding_and_allowed(mask)
    if found is None:
        return None
    validity, allowed = found
    num_queries, num_keys = allowed.shape[-2:]
    query = torch.arange(num_queries, device=mask.device)[:, None] + (num_keys - num_queries)
    causal = torch.arange(num_keys, device=mask.device)[None, :] <= query  # (q, kv)
    expected = causal[None] & validity[:, None, :]
    real = validity[:, num_keys - num_queries :, None]
    same = (allowed == expected).all(dim=-1, keepdim=True)
    blind = ~allowed.any(dim=-1, keepdim=True)
    if not bool((same | (~real & blind)).all()):
        return None
    return validity.long()


def key_padding(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, kv)`` bool, the real keys of a 2-D mask, or of a 4-D one the stock mask takes as it is
    (a call that routes nothing): there, the tokens that see themselves."""
    if attention_mask.ndim == 2:
        return attention_mask.bool()
    found = _padding_and_allowed(attention_mask)
    if found is None:  # a form only the stock mask reads (a call that routes nothing): every token counts
        batch, num_keys = attention_mask.shape[0], attention_mask.shape[-1]
        return torch.ones(batch, num_keys, dtype=torch.bool, device=attention_mask.device)
    return found[0]
