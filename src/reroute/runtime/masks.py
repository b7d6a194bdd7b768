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
