"""SparseVLM's text raters (docs/semantics.md §21): the text tokens most related to the image.

Chosen once per prompt from the decoder's input embeddings, as the official code does before
its first layer: each visual token's dot products with the text tokens that follow the image,
softmax over those text tokens, averaged over the visual tokens, give one relevance per text
token; the raters are the text tokens whose relevance is strictly above the mean relevance.
"""

from __future__ import annotations

import torch


def select_raters(embeddings: torch.Tensor, visual: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool: each sample's raters.

    Args:
        embeddings: ``(B, L, D)`` the states entering the decoder's first layer.
        visual: ``(B, L)`` bool, the sample's visual tokens (never padding).
        valid: ``(B, L)`` bool, the tokens that are neither padding nor removed by a vision stage.

    The pool of a sample is its valid text tokens after its first visual token (the official
    code's ``hidden_states[:, image_end:]`` on a one-image prompt). When no relevance is strictly
    above the mean (one pool token, or all equal) every pool token rates. A sample without a
    visual token has no rater.
    """
    batch, length, _ = embeddings.shape
    raters = torch.zeros(batch, length, dtype=torch.bool, device=embeddings.device)
    positions = torch.arange(length, device=embeddings.device)
    for b in range(batch):  # once per prefill; a sample's raters never depend on its batch companions
        vis = visual[b] & valid[b]
        if not bool(vis.any()):
            continue
        first = int(positions[vis][0])
        pool = valid[b] & ~visual[b] & (positions > first)
        if not bool(pool.any()):
            continue
        v = embeddings[b, vis].float()
        t = embeddings[b, pool].float()
        relevance = (v @ t.T).softmax(dim=1).mean(dim=0)  # (T,): softmax over the text, mean over the image
        chosen = relevance > relevance.mean()
        if not bool(chosen.any()):
            chosen = torch.ones_like(chosen)
        raters[b, pool] = chosen
    return raters
