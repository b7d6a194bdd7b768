"""Nüwa stage 1, selection (docs/semantics.md §6): candidates per 2 x 2 cell, then the global top-K anchors.

Pure functions on one image's saliency grid. Raster index ``r = row * W + col`` of the
unpadded ``(H, W)`` grid throughout. A side of odd length is padded by one row or column of
non-patches (as the reference pads Qwen's merged grid with zero saliency, which no real patch
can lose to: softmax attention is positive); padding is never a candidate.
"""

from __future__ import annotations

import torch

from reroute.runtime.decision import select_top_k


def cell_candidates(saliency: torch.Tensor, per_cell: int) -> torch.Tensor:
    """Each disjoint 2 x 2 cell's ``per_cell`` most salient patches.

    Args:
        saliency: ``(H, W)`` float, one image's saliency on its patch grid (raster layout).
        per_cell: ``n`` in 1..4. A cell cut by the padding of an odd side keeps all its
            patches when it has at most ``n``.

    Returns:
        ``(H, W)`` bool, the candidates. Ties go to the lower raster index (within a cell the
        raster order is top-left, top-right, bottom-left, bottom-right).
    """
    height, width = saliency.shape
    pad_h, pad_w = height % 2, width % 2
    padded = torch.nn.functional.pad(saliency.float(), (0, pad_w, 0, pad_h), value=float("-inf"))
    real = torch.nn.functional.pad(torch.ones_like(saliency, dtype=torch.bool), (0, pad_w, 0, pad_h), value=False)
    cells_h, cells_w = (height + pad_h) // 2, (width + pad_w) // 2

    def to_cells(t: torch.Tensor) -> torch.Tensor:  # (2*ch, 2*cw) -> (ch*cw, 4), cell-local raster order
        return t.view(cells_h, 2, cells_w, 2).permute(0, 2, 1, 3).reshape(cells_h * cells_w, 4)

    def from_cells(t: torch.Tensor) -> torch.Tensor:
        return t.view(cells_h, cells_w, 2, 2).permute(0, 2, 1, 3).reshape(2 * cells_h, 2 * cells_w)

    cell_real = to_cells(real)
    keep = cell_real.sum(dim=1).clamp(max=per_cell)
    chosen = select_top_k(to_cells(padded), cell_real, keep)
    return from_cells(chosen)[:height, :width]


def select_anchors(saliency: torch.Tensor, candidates: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` most salient candidates (all of them if there are fewer), in raster order.

    Args:
        saliency: ``(N,)`` float, raster order.
        candidates: ``(N,)`` bool.
        count: ``K``.

    Returns:
        ``(min(K, #candidates),)`` long raster indices, ascending. Ties go to the lower index.
    """
    keep = min(count, int(candidates.sum()))
    chosen = select_top_k(saliency.float()[None], candidates[None], torch.tensor([keep], device=saliency.device))[0]
    return torch.nonzero(chosen).flatten()
