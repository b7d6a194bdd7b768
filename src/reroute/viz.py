"""Pictures of routing decisions: which image patches were active at each stage.

matplotlib is an optional dependency (``pip install reroute[viz]``); it is imported lazily.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from reroute.trace import SampleTrace


def active_patch_grids(sample: SampleTrace, visual_positions: Sequence[int]) -> list[np.ndarray]:
    """Per decision, a ``(side, side)`` bool grid of the patches selected there.

    ``visual_positions``: the prompt positions of one image's visual tokens, in raster order
    (for LLaVA the contiguous ``<image>`` span).
    """
    side = math.isqrt(len(visual_positions))
    if side * side != len(visual_positions):
        raise ValueError(f"{len(visual_positions)} visual tokens do not form a square grid; pass one image's tokens")
    patch_of = {p: i for i, p in enumerate(visual_positions)}
    grids = []
    for chosen in sample.selected:
        grid = np.zeros(side * side, dtype=bool)
        grid[[patch_of[p] for p in chosen if p in patch_of]] = True
        grids.append(grid.reshape(side, side))
    return grids


def _draw_box(ax, box, image_size, color, label):
    from matplotlib.patches import Rectangle

    if box is None:
        return
    x1, y1, x2, y2 = (v * image_size for v in box)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2, ec=color, label=label))


def plot_routing_comparison(
    image,
    title: str,
    target_box,
    runs: dict[str, tuple[SampleTrace, tuple | None]],
    visual_positions: Sequence[int],
    decision_layers: dict[str, Sequence[int]],
    path: str,
) -> None:
    """One figure: the image with the referred and predicted boxes, then per run (e.g. remove,
    reroute) one panel per decision with the active patches overlaid on the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    colors = ["tab:red", "tab:blue", "tab:orange", "tab:purple"]
    image = np.asarray(image)
    size = image.shape[0]
    num_stages = max(len(trace.selected) for trace, _ in runs.values())
    fig, axes = plt.subplots(len(runs), num_stages + 1, figsize=(2.6 * (num_stages + 1), 2.8 * len(runs)), squeeze=False)
    for row, (name, (trace, predicted)) in enumerate(runs.items()):
        ax = axes[row, 0]
        ax.imshow(image)
        _draw_box(ax, target_box, size, "lime", "referred")
        _draw_box(ax, predicted, size, colors[row % len(colors)], f"{name} prediction")
        ax.set_title(f"{name}", fontsize=9)
        ax.legend(fontsize=6, loc="lower right")
        ax.axis("off")
        for s, grid in enumerate(active_patch_grids(trace, visual_positions)):
            ax = axes[row, s + 1]
            ax.imshow(image)
            cell = size / grid.shape[0]
            overlay = np.kron(~grid, np.ones((size // grid.shape[0], size // grid.shape[1])))
            ax.imshow(np.ma.masked_where(overlay == 0, overlay), cmap="gray", alpha=0.6, vmin=0, vmax=1)
            for r, c in zip(*np.nonzero(grid)):  # active patches: outlined
                ax.add_patch(Rectangle((c * cell, r * cell), cell, cell, fill=False, lw=1.2, ec="cyan"))
            layer = decision_layers[name][s]
            ax.set_title(f"{name}: layer {layer}, {int(grid.sum())} active", fontsize=8)
            ax.axis("off")
        for s in range(len(trace.selected) + 1, num_stages + 1):
            axes[row, s].axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
