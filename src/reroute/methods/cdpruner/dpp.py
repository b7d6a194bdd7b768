"""CDPruner's selection (docs/semantics.md §22): a conditional determinantal point process over one image's tokens.

The kernel weighs each pair's similarity by both tokens' relevance to the instruction,
``L_ij = r_i * cos(x_i, x_j) * r_j`` (``x`` the projected tokens). Relevance: the mean over the
instruction's text embeddings ``t_m`` of ``cos(v_i, t_m)`` (``v`` the tokens in the text
embeddings' space), negated in CLIP's space as CDPruner's LLaVA code does, min-max normalised to
``(0, 1]`` with ``1e-6`` added (all ones when every token is equally relevant, where the code
divides by zero, or when there is no instruction). The subset is the greedy MAP of the DPP (fast Cholesky updates): pick the token of
largest remaining gain ``d_j^2``, update every gain, never pick a token twice. Float32 throughout.
"""

from __future__ import annotations

import torch


def instruction_relevance(image_embeds: torch.Tensor, text_embeds: torch.Tensor, negate: bool = True) -> torch.Tensor:
    """``(N,)`` float32 relevance of ``N`` tokens (``image_embeds`` ``(N, C)``) to ``M`` text embeddings ``(M, C)``.

    ``negate``: the official code's sign on CLIP's joint space (its authors observed the flip on CLIP
    only); False is the paper's plain cosine, used in the decoder's embedding space."""
    if text_embeds.shape[0] == 0:  # no instruction: every token equally relevant (the DPP on similarity alone)
        return torch.ones(image_embeds.shape[0], dtype=torch.float32, device=image_embeds.device)
    v = image_embeds.float()
    t = text_embeds.float()
    v = v / v.norm(dim=-1, keepdim=True)
    t = t / t.norm(dim=-1, keepdim=True)
    relevance = (v @ t.t()).mean(dim=-1)
    if negate:
        relevance = -relevance
    spread = relevance.max() - relevance.min()
    if spread == 0:
        return torch.ones_like(relevance)
    return (relevance - relevance.min() + 1e-6) / spread


def conditional_kernel(tokens: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """``(N, N)`` float32 ``r_i cos(x_i, x_j) r_j`` of the rows of ``tokens`` ``(N, D)``."""
    x = tokens / tokens.norm(dim=-1, keepdim=True)
    x = x.float()
    return relevance[:, None] * (x @ x.t()) * relevance[None, :]


#: a gain at most this fraction of the largest diagonal entry adds no volume: the kernel's rank is spent
SPENT_GAIN = 1e-6


def dpp_select(kernel: torch.Tensor, count: int) -> torch.Tensor:
    """``(count,)`` long: the greedy MAP picks of the DPP with ``kernel`` ``(N, N)``, in pick order (ties: lower index).

    Once no remaining gain is above ``SPENT_GAIN`` of the largest diagonal entry (a kernel of rank
    below ``count``: tokens narrower than the kept count, or nearly collinear), the rest of the
    picks are the remaining tokens of largest diagonal ``r_i^2`` (ties: lower index); the official
    code would take square roots of gains at or below zero there and pick NaN."""
    num_tokens = kernel.shape[0]
    if not 1 <= count <= num_tokens:
        raise ValueError(f"CDPruner keeps 1..{num_tokens} of {num_tokens} tokens, got {count}")
    factors = torch.zeros(count, num_tokens, dtype=torch.float32, device=kernel.device)
    diagonal = torch.diagonal(kernel).float()
    gains = diagonal.clone()
    floor = SPENT_GAIN * float(diagonal.max())
    picks = torch.empty(count, dtype=torch.long, device=kernel.device)
    for i in range(count):
        j = torch.argmax(gains)
        if not float(gains[j]) > floor:
            free = torch.isfinite(gains)  # the tokens not picked yet
            order = torch.argsort(diagonal.masked_fill(~free, float("-inf")), descending=True, stable=True)
            picks[i:] = order[: count - i]
            break
        picks[i] = j
        row = (kernel[j] - factors[:i, j] @ factors[:i]) / torch.sqrt(gains[j])
        factors[i] = row
        gains -= row.square()
        gains[j] = float("-inf")
    return picks


def cdpruner_select(
    tokens: torch.Tensor, image_embeds: torch.Tensor, text_embeds: torch.Tensor, count: int, negate: bool = True
) -> torch.Tensor:
    """``(count,)`` long, ascending: the tokens CDPruner keeps of one image (``tokens`` the projected ``(N, D)``;
    ``negate`` as `instruction_relevance`)."""
    kernel = conditional_kernel(tokens, instruction_relevance(image_embeds, text_embeds, negate))
    return torch.sort(dpp_select(kernel, count)).values
