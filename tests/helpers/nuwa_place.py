"""Where stage 1's tokens go in the prompt: the kept image tokens' positions and their embeddings.

The stock models fill image-token positions with ``masked_scatter``: image after image in
row-major order of ``(batch, position)``, each image's tokens in raster order. Stage 1 keeps
a subset of each image's tokens; this writes them at the positions they had (positions are
never renumbered, docs/semantics.md §6) and says which positions stay in the sequence.
"""

from __future__ import annotations

import torch

from reroute.methods.nuwa.stage1 import Stage1Image


def place_stage1(
    inputs_embeds: torch.Tensor, image_mask: torch.Tensor, images: list[Stage1Image]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write each image's kept tokens at their prompt positions.

    Args:
        inputs_embeds: ``(B, L, D)`` text embeddings (image positions hold anything).
        image_mask: ``(B, L)`` bool, the image-token positions (``input_ids == image_token_id``).
        images: stage 1's results, one per image in prompt order (batch-major).

    Returns:
        ``(embeds, keep)``: ``embeds`` a copy of ``inputs_embeds`` with the kept tokens written
        (dropped image positions keep their input); ``keep`` ``(B, L)`` bool, False exactly at
        the dropped image positions.
    """
    positions = torch.nonzero(image_mask)  # (sum N_i, 2) rows (b, l), row-major: masked_scatter's order
    sizes = [image.grid[0] * image.grid[1] for image in images]
    if len(positions) != sum(sizes):
        raise ValueError(
            f"the prompt has {len(positions)} image tokens but stage 1 saw images of {sum(sizes)} tokens in all; "
            "pass the images of exactly these prompts, in order"
        )
    embeds = inputs_embeds.clone()
    keep = ~image_mask.clone()
    for image, spots in zip(images, torch.split(positions, sizes)):
        kept = spots[image.kept]
        embeds[kept[:, 0], kept[:, 1]] = image.tokens.to(embeds.dtype)
        keep[kept[:, 0], kept[:, 1]] = True
    return embeds, keep
