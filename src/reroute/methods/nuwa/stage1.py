"""Nüwa stage 1 end to end (docs/semantics.md §6): per image, the kept raster indices and the decoder-ready tokens.

Every image is reduced on its own (a batch equals its images one by one). The decoder then
places ``tokens[i]`` at the position of visual token ``kept[i]`` of that image, as if all
its tokens were there (positions are not renumbered).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reroute.methods.nuwa.aggregate import Rule, aggregate_anchors, llava_radius, qwen_radius
from reroute.methods.nuwa.features import VisionFeatures, llava_vision_features, qwen_vision_features
from reroute.methods.nuwa.params import NuwaParams, NuwaRatios
from reroute.methods.nuwa.select import cell_candidates, select_anchors

#: anchors at or above this quantile of the anchors' saliency pass unchanged
LLAVA_QUANTILE = 0.55
QWEN_QUANTILE = 0.1


@dataclass(frozen=True)
class Stage1Image:
    """Stage 1's result for one image.

    kept: ``(K',)`` long, ascending raster indices of the kept tokens in the image's grid
        (``K' = min(K, candidates)``).
    tokens: ``(K', D_text)`` the kept tokens after aggregation, post-projector (LLaVA) or
        post-merger (Qwen): what enters the decoder at those positions.
    saliency: ``(H * W,)`` float32, raster order (for pictures).
    grid: ``(H, W)``.
    """

    kept: torch.Tensor
    tokens: torch.Tensor
    saliency: torch.Tensor
    grid: tuple[int, int]


def reduce_image(
    image: VisionFeatures, params: NuwaParams, radius: float, quantile: float, rule: Rule, self_in_denominator: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates, anchors and aggregation on one image: ``(kept (K',), features (K', D))`` before any projector."""
    height, width = image.grid
    candidates = cell_candidates(image.saliency.view(height, width), params.per_cell).flatten()
    kept = select_anchors(image.saliency, candidates, params.anchors)
    merged = aggregate_anchors(
        image.features, image.similarity, image.saliency, kept, image.grid, radius, quantile, rule, self_in_denominator
    )
    return kept, merged


@torch.no_grad()
def nuwa_llava_stage1(
    model: nn.Module,
    pixel_values: torch.Tensor,
    params: NuwaParams,
    similarity_layers: range | None = None,
    self_in_denominator: bool = False,
) -> list[Stage1Image]:
    """Nüwa stage 1 on each image of a ``LlavaForConditionalGeneration``.

    Args:
        model: the LLaVA model.
        pixel_values: ``(B, 3, S, S)``.
        params: ``n`` and ``K`` (``llava_params(tier)``).
        similarity_layers: see ``llava_vision_features``.
        self_in_denominator: the reference code's merge denominator (see ``reroute.methods.nuwa.aggregate``).

    Returns:
        One ``Stage1Image`` per image; tokens are ``multi_modal_projector`` of the aggregated
        pre-projector features, ``(K, text hidden size)``.
    """
    out = []
    for image in llava_vision_features(model, pixel_values, similarity_layers):
        kept, merged = reduce_image(image, params, llava_radius(), LLAVA_QUANTILE, "residual", self_in_denominator)
        tokens = model.model.multi_modal_projector(merged[None])[0]
        out.append(Stage1Image(kept, tokens, image.saliency, image.grid))
    return out


@torch.no_grad()
def nuwa_qwen_stage1(
    model: nn.Module,
    pixel_values: torch.Tensor,
    image_grid_thw: torch.Tensor,
    ratios: NuwaRatios,
    similarity_blocks: range | None = None,
) -> list[Stage1Image]:
    """Nüwa stage 1 on each image of a ``Qwen2_5_VLForConditionalGeneration``.

    Args:
        model: the Qwen2.5-VL model.
        pixel_values: ``(sum t*h*w, patch_dim)``; image_grid_thw: ``(num_images, 3)``.
        ratios: the budget rule (``qwen_ratios(keep)``); each image gets ``ratios.params(N)``.
        similarity_blocks: see ``qwen_vision_features``.

    Returns:
        One ``Stage1Image`` per image (in ``image_grid_thw`` order); tokens are post-merger
        ``(K', out_hidden_size)``. Odd grid sides are padded for the 2 x 2 cells and the
        radius; padding is never kept and contributes nothing.
    """
    out = []
    for image in qwen_vision_features(model, pixel_values, image_grid_thw, similarity_blocks):
        params = ratios.params(image.grid[0] * image.grid[1])
        kept, tokens = reduce_image(image, params, qwen_radius(image.grid), QWEN_QUANTILE, "convex")
        out.append(Stage1Image(kept, tokens, image.saliency, image.grid))
    return out
