"""Nüwa stage 1, aggregation (docs/semantics.md §6): low-saliency anchors absorb similar nearby patches.

For an anchor ``i`` and a patch ``j != i`` of the same image, the weight is
``w_ij = relu(cos(f_i, f_j)) * max(0, 1 - dist_ij / r)``, ``dist`` the Euclidean distance in
patches on the grid and ``f`` the similarity features (cosine of a zero vector is 0, as
``torch.nn.functional.normalize`` makes it). Anchors whose saliency is at least the
``quantile``-quantile of the anchors' saliency (``torch.quantile``, linear interpolation, as
the reference code computes it) pass unchanged, bit for bit. The others become

- ``"residual"`` (LLaVA-1.5, docs/semantics.md §6): ``x_i + sum_j w_ij x_j / sum_l w_il``, both sums over
  ``j, l != i``; ``x_i`` unchanged when the sum is 0. With ``self_in_denominator=True`` the
  denominator also counts ``w_ii = 1``, which is what the reference code computes
  (nuwa/clip_encoder.py lines 318-325).
- ``"convex"`` (Qwen2.5-VL): ``(x_i + sum_j w_ij x_j) / (1 + sum_j w_ij)``, ``j != i``: the
  weighted average over the patches including ``i`` itself with ``w_ii = 1``
  (Vscan/qwen/model/qwen2_5vl_nuwa.py lines 2228-2239 normalise a row that keeps its
  diagonal); never undefined.

Weights and sums are float32; merged rows are cast back to ``x``'s dtype.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Rule = Literal["residual", "convex"]

#: anchors whose weight rows are built at once (bounds memory at ROW_CHUNK x N floats)
ROW_CHUNK = 1024


def high_saliency(anchor_saliency: torch.Tensor, quantile: float) -> torch.Tensor:
    """``(K,)`` bool: anchors at or above the ``quantile``-quantile of ``anchor_saliency`` (linear interpolation)."""
    threshold = torch.quantile(anchor_saliency.float(), quantile)
    return anchor_saliency.float() >= threshold


def grid_coordinates(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """``(H * W, 2)`` float32 (row, col) of each raster index."""
    rows, cols = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=-1).float()


def merge_weights(
    similarity: torch.Tensor, grid: tuple[int, int], anchors: torch.Tensor, radius: float
) -> torch.Tensor:
    """``(len(anchors), N)`` float32 ``w_ij`` of each given anchor ``i`` over all patches, 0 on the diagonal.

    similarity: ``(N, C)`` features ``f`` in raster order; grid: ``(H, W)`` with ``H * W = N``.
    """
    f = F.normalize(similarity.float(), dim=-1)
    cos = f[anchors] @ f.T
    coords = grid_coordinates(*grid, device=similarity.device)
    offset = coords[anchors][:, None, :] - coords[None, :, :]
    dist = torch.hypot(offset[..., 0], offset[..., 1])  # exact on the grid (cdist may go through a matmul)
    weights = cos.clamp(min=0) * (1 - dist / radius).clamp(min=0)
    weights[torch.arange(len(anchors), device=weights.device), anchors] = 0.0
    return weights


def aggregate_anchors(
    features: torch.Tensor,
    similarity: torch.Tensor,
    saliency: torch.Tensor,
    anchors: torch.Tensor,
    grid: tuple[int, int],
    radius: float,
    quantile: float,
    rule: Rule,
    self_in_denominator: bool = False,
) -> torch.Tensor:
    """The anchors' output features.

    Args:
        features: ``(N, D)`` ``x`` of every patch of one image, raster order.
        similarity: ``(N, C)`` ``f``, raster order.
        saliency: ``(N,)``.
        anchors: ``(K,)`` long raster indices (ascending).
        grid: ``(H, W)``, ``H * W = N``.
        radius: ``r`` in patches.
        quantile: anchors at or above this quantile of the anchors' saliency pass unchanged.
        rule: ``"residual"`` or ``"convex"`` (module docstring).
        self_in_denominator: ``"residual"`` only; the reference code's denominator.

    Returns:
        ``(K, D)`` in ``features.dtype``; rows of high-saliency anchors are ``features[anchors]`` exactly.
    """
    out = features[anchors].clone()
    merging = torch.nonzero(~high_saliency(saliency[anchors], quantile)).flatten()
    x = features.float()
    for start in range(0, len(merging), ROW_CHUNK):
        rows = merging[start : start + ROW_CHUNK]
        weights = merge_weights(similarity, grid, anchors[rows], radius)  # (R, N), zero diagonal
        total = weights.sum(dim=1, keepdim=True)
        gathered = weights @ x  # sum_{j != i} w_ij x_j
        own = x[anchors[rows]]
        if rule == "convex":
            merged = (own + gathered) / (1 + total)
        elif rule == "residual":
            denominator = total + 1 if self_in_denominator else total
            merged = own + gathered / denominator.clamp(min=torch.finfo(torch.float32).tiny)
            merged = torch.where(total > 0, merged, own)  # nothing similar nearby: unchanged
        else:
            raise ValueError(f"aggregate_anchors: unknown rule {rule!r}; pass 'residual' or 'convex'")
        out[rows] = merged.to(features.dtype)
    return out


def llava_radius() -> float:
    """LLaVA-1.5's merge radius, in patches: sqrt(280) (docs/semantics.md §6; the reference's default ``distance=280``)."""
    return math.sqrt(280)


def qwen_radius(grid: tuple[int, int], fraction: float = 0.8) -> float:
    """Qwen2.5-VL's merge radius: ``fraction`` of the diagonal of the grid padded to even sides.

    The reference measures the diagonal between the first and last cell centres of the padded
    grid, ``sqrt((H' - 1)^2 + (W' - 1)^2)``, and uses 1.0 when that is 0.
    """
    height, width = grid[0] + grid[0] % 2, grid[1] + grid[1] % 2
    diagonal = math.sqrt((height - 1) ** 2 + (width - 1) ** 2)
    return fraction * diagonal if diagonal > 0 else 1.0
