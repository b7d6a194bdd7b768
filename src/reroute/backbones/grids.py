"""Where each visual token of a prompt lies on its image: prompt positions -> grid cells -> pixels.

A `TokenGrid` is one image's visual tokens as a ``rows x cols`` raster over the image as the
model saw it, placed back onto the original image: ``region`` is the rectangle of the
original image (in its pixels) that the model's grid spans. It can stick out of the image
(LLaVA's pad-to-square) or lie inside it (a centre crop).

* LLaVA-1.5 (`llava_grids`): every image is one square span of ``<image>`` tokens (576 at
  336 px); the processor pads to a square (``do_pad``), resizes and centre-crops, and
  `llava_region` undoes those steps.
* Qwen2.5-VL / Qwen2-VL / Qwen3-VL (`qwen_grids`): image ``i`` has a ``(t, h, w)`` patch grid
  (``image_grid_thw``); the merger joins 2 x 2 patches, so its tokens form ``t`` rasters of
  ``(h / 2) x (w / 2)`` merged tokens (odd sides are common). The processor resized the
  whole image (no crop), so the grid spans the whole original image.

Several images give several grids, in prompt order. Which rule a model follows is its family
adapter's declaration (``Backbone.grids``, the ``*_prompt_grids`` functions below, or a rule in the
adapter's own file); `reroute.backbones.grids_for` asks it. ``Backbone.answer_frame`` says in which
frame the family's answer boxes are given (`processed_pixels`, `per_mille`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class TokenGrid:
    """One image's visual tokens as a raster over the original image.

    positions: the tokens' prompt positions in raster order (row-major), ``rows * cols`` of them.
    rows, cols: the grid's shape in tokens.
    region: ``(x0, y0, x1, y1)``: the rectangle of the original image, in its pixels, that the
        grid spans (the model's whole input frame mapped back).
    image_index: which image of the prompt (0-based) the grid belongs to.
    image_size: ``(width, height)`` of the original image.
    """

    positions: tuple[int, ...]
    rows: int
    cols: int
    region: Box
    image_index: int = 0
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", tuple(int(p) for p in self.positions))
        if len(self.positions) != self.rows * self.cols:
            raise ValueError(
                f"a {self.rows} x {self.cols} grid needs {self.rows * self.cols} positions, got {len(self.positions)}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    def cell_of(self) -> dict[int, tuple[int, int]]:
        """Prompt position -> (row, column)."""
        return {p: divmod(i, self.cols) for i, p in enumerate(self.positions)}

    def mask(self, positions: Iterable[int]) -> np.ndarray:
        """``(rows, cols)`` bool: the cells whose token is among ``positions`` (others are ignored)."""
        cells = self.cell_of()
        grid = np.zeros(self.shape, dtype=bool)
        for p in positions:
            if (cell := cells.get(int(p))) is not None:
                grid[cell] = True
        return grid

    def values(self, positions: Sequence[int], values: Sequence[float], fill: float = math.nan) -> np.ndarray:
        """``(rows, cols)`` float: ``values[i]`` at the cell of ``positions[i]``; ``fill`` elsewhere."""
        cells = self.cell_of()
        grid = np.full(self.shape, fill, dtype=np.float64)
        for p, v in zip(positions, values):
            if (cell := cells.get(int(p))) is not None:
                grid[cell] = float(v)
        return grid

    def cell_size(self) -> tuple[float, float]:
        """(width, height) of one token's cell in original-image pixels."""
        x0, y0, x1, y1 = self.region
        return ((x1 - x0) / self.cols, (y1 - y0) / self.rows)

    def cell_box(self, row: int, col: int) -> Box:
        """The cell's rectangle in original-image pixels."""
        w, h = self.cell_size()
        x0, y0 = self.region[0] + col * w, self.region[1] + row * h
        return (x0, y0, x0 + w, y0 + h)

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)`` arrays of the cells' centre x and y in original-image pixels."""
        w, h = self.cell_size()
        xs = self.region[0] + (np.arange(self.cols) + 0.5) * w
        ys = self.region[1] + (np.arange(self.rows) + 0.5) * h
        return np.meshgrid(xs, ys)

    def in_box(self, box: Box) -> np.ndarray:
        """``(rows, cols)`` bool: the cells whose centre lies inside ``box`` (original pixels, edges included)."""
        cx, cy = self.centres()
        x0, y0, x1, y1 = box
        return (cx >= x0) & (cx <= x1) & (cy >= y0) & (cy <= y1)

    def frame_to_image(self, box: Box, frame: tuple[float, float] = (1.0, 1.0)) -> Box:
        """A box given in the model's frame (``frame`` = its width and height in the box's units,
        (1, 1) for normalised coordinates) mapped onto the original image's pixels."""
        x0, y0, x1, y1 = self.region
        sx, sy = (x1 - x0) / frame[0], (y1 - y0) / frame[1]
        return (x0 + box[0] * sx, y0 + box[1] * sy, x0 + box[2] * sx, y0 + box[3] * sy)


# ----------------------------------------------------------------------------- LLaVA-1.5


def _size_field(size, key: str):
    """A field of an image processor's ``size``/``crop_size`` (a dict or a ``SizeDict``), or None."""
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def llava_region(image_size: tuple[int, int], image_processor=None) -> Box:
    """The rectangle of the original image (``(width, height)``) that LLaVA's processed frame covers.

    Undoes, in order: pad to a square centred on the image (``do_pad``, LLaVA-1.5's
    expand-to-square), resize (``shortest_edge`` or ``height``/``width``), centre crop. Without an
    image processor, the frame is the whole image.
    """
    width, height = image_size
    # the current frame: its extent in original pixels (x0, y0, w, h) and its size in pixels (pw, ph)
    x0, y0, fw, fh = 0.0, 0.0, float(width), float(height)
    pw, ph = width, height
    if image_processor is None:
        return (x0, y0, x0 + fw, y0 + fh)
    if getattr(image_processor, "do_pad", False) and width != height:
        side = max(width, height)
        x0, y0 = -float((side - width) // 2), -float((side - height) // 2)
        fw = fh = float(side)
        pw = ph = side
    size = getattr(image_processor, "size", None)
    if getattr(image_processor, "do_resize", True) and size is not None:
        shortest = _size_field(size, "shortest_edge")
        if shortest:
            short, long = min(pw, ph), max(pw, ph)
            new_short, new_long = int(shortest), int(int(shortest) * long / short)
            pw, ph = (new_short, new_long) if pw <= ph else (new_long, new_short)
        elif _size_field(size, "height") and _size_field(size, "width"):
            pw, ph = int(_size_field(size, "width")), int(_size_field(size, "height"))
    crop = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop is not None:
        cw, ch = int(_size_field(crop, "width")), int(_size_field(crop, "height"))
        # transformers' centre crop: offsets int((size - crop) / 2), padding when the crop is larger
        left = (pw - cw) // 2 if cw > pw else int((pw - cw) / 2.0)
        top = (ph - ch) // 2 if ch > ph else int((ph - ch) / 2.0)
        sx, sy = fw / pw, fh / ph
        x0, y0, fw, fh = x0 + left * sx, y0 + top * sy, cw * sx, ch * sy
    return (x0, y0, x0 + fw, y0 + fh)


def llava_grids(
    input_ids: torch.Tensor | Sequence[int],
    image_token_id: int,
    image_sizes: Sequence[tuple[int, int]],
    image_processor=None,
) -> list[TokenGrid]:
    """One square grid per image of a LLaVA-1.5 prompt.

    input_ids: one sample's ids (as in the batch, padding included, so positions match its trace).
    image_sizes: the original images' ``(width, height)``, in prompt order.
    """
    ids = torch.as_tensor(input_ids).flatten()
    positions = torch.nonzero(ids == image_token_id).flatten().tolist()
    num_images = len(image_sizes)
    if num_images == 0 or len(positions) % num_images:
        raise ValueError(f"{len(positions)} image tokens cannot be split evenly over {num_images} images")
    per_image = len(positions) // num_images
    side = math.isqrt(per_image)
    if side * side != per_image:
        raise ValueError(f"{per_image} image tokens per image do not form a square grid (LLaVA-1.5 gives 576)")
    return [
        TokenGrid(
            positions=tuple(positions[i * per_image : (i + 1) * per_image]),
            rows=side,
            cols=side,
            region=llava_region(tuple(size), image_processor),
            image_index=i,
            image_size=tuple(size),
        )
        for i, size in enumerate(image_sizes)
    ]


# ----------------------------------------------------------------------------- Qwen2.5-VL / Qwen2-VL


def qwen_grids(
    input_ids: torch.Tensor | Sequence[int],
    image_token_id: int,
    image_grid_thw: torch.Tensor | Sequence[Sequence[int]],
    image_sizes: Sequence[tuple[int, int]],
    merge_size: int = 2,
) -> list[TokenGrid]:
    """One grid per image (per temporal slice when ``t > 1``) of a Qwen2.5-VL / Qwen2-VL prompt.

    input_ids: one sample's ids (padding included). image_grid_thw: that sample's images'
    ``(t, h, w)`` patch grids, in prompt order (the processor's ``image_grid_thw`` rows for this
    sample). image_sizes: the original images' ``(width, height)``.
    """
    ids = torch.as_tensor(input_ids).flatten()
    positions = torch.nonzero(ids == image_token_id).flatten().tolist()
    thw = [tuple(int(v) for v in g) for g in torch.as_tensor(image_grid_thw).reshape(-1, 3).tolist()]
    if len(thw) != len(image_sizes):
        raise ValueError(f"{len(thw)} image grids but {len(image_sizes)} image sizes: give one size per image")
    needed = sum(t * (h // merge_size) * (w // merge_size) for t, h, w in thw)
    if needed != len(positions):
        raise ValueError(f"the image grids {thw} give {needed} merged tokens but the prompt has {len(positions)} image tokens")
    # one raster per temporal slice, each over its whole image
    shapes = [(h // merge_size, w // merge_size) for t, h, w in thw for _ in range(t)]
    images = [i for i, (t, _, _) in enumerate(thw) for _ in range(t)]
    return whole_image_grids(positions, shapes, [image_sizes[i] for i in images], images)


def whole_image_grids(
    positions: Sequence[int],
    shapes: Sequence[tuple[int, int]],
    image_sizes: Sequence[tuple[int, int]],
    image_indices: Sequence[int] | None = None,
) -> list[TokenGrid]:
    """Consecutive ``rows x cols`` rasters of ``positions``, each spanning its whole original image
    (a processor that resizes without cropping: Qwen-VL, Mistral 3).

    shapes: per grid, ``(rows, cols)``; image_sizes: per grid, the original ``(width, height)``;
    image_indices: per grid, which image of the prompt (default: grid ``i`` is image ``i``).
    """
    indices = range(len(shapes)) if image_indices is None else image_indices
    grids, start = [], 0
    for (rows, cols), (width, height), index in zip(shapes, image_sizes, indices):
        grids.append(
            TokenGrid(
                positions=tuple(positions[start : start + rows * cols]),
                rows=rows,
                cols=cols,
                region=(0.0, 0.0, float(width), float(height)),
                image_index=index,
                image_size=(width, height),
            )
        )
        start += rows * cols
    return grids


def model_frame(grid_thw: Sequence[int], patch_size: int = 14) -> tuple[int, int]:
    """(width, height) in pixels of the resized image a Qwen grid ``(t, h, w)`` came from (its
    absolute-coordinate answers are in this frame)."""
    _, h, w = (int(v) for v in grid_thw)
    return (w * patch_size, h * patch_size)


# ----------------------------------------------------------------------------- per-family rules
# What adapters declare as ``Backbone.grids``: (config, processor, inputs, image_sizes, sample) -> grids,
# and as ``Backbone.answer_frame``: (config, grid) -> the (width, height) answer boxes are given in.


def llava_prompt_grids(config, processor, inputs: dict, image_sizes: Sequence[tuple[int, int]], sample: int = 0) -> list[TokenGrid]:
    """LLaVA-1.5: `llava_grids` of sample ``sample`` of a processed batch."""
    ids = inputs["input_ids"][sample]
    return llava_grids(ids, config.image_token_id, image_sizes, getattr(processor, "image_processor", None))


def qwen_prompt_grids(config, processor, inputs: dict, image_sizes: Sequence[tuple[int, int]], sample: int = 0) -> list[TokenGrid]:
    """Qwen2-VL, Qwen2.5-VL, Qwen3-VL: `qwen_grids` of sample ``sample`` of a processed batch."""
    ids = inputs["input_ids"][sample]
    thw = inputs["image_grid_thw"]
    # rows of image_grid_thw belong to the samples in order: skip the earlier samples' images
    counts = [_count_images(row, config) for row in inputs["input_ids"]]
    first = sum(counts[:sample])
    merge = getattr(config.vision_config, "spatial_merge_size", 2)
    return qwen_grids(ids, config.image_token_id, thw[first : first + counts[sample]], image_sizes, merge)


def _count_images(ids: torch.Tensor, config) -> int:
    """Images in one Qwen prompt: the ``<|vision_start|>`` tokens followed by an image token."""
    ids = torch.as_tensor(ids)
    starts = torch.nonzero(ids[:-1] == config.vision_start_token_id).flatten()
    return int((ids[starts + 1] == config.image_token_id).sum())


def processed_pixels(config, grid: TokenGrid) -> tuple[float, float]:
    """Answers in pixels of the image as the model saw it: the grid's cells times the pixels one token covers."""
    vision = config.vision_config
    cell = vision.patch_size * (getattr(vision, "spatial_merge_size", 1) or 1)
    return (grid.cols * cell, grid.rows * cell)


def per_mille(config, grid: TokenGrid) -> tuple[float, float]:
    """Answers in thousandths of the image's width and height (Qwen2-VL, Qwen3-VL)."""
    return (1000.0, 1000.0)
