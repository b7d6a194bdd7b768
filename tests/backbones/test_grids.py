"""Token grids: prompt positions -> cells -> original-image pixels, checked against the real processors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.helpers.models import QWEN_END, QWEN_IMAGE, QWEN_START, FAMILIES, qwen_batch, qwen_prompt
from PIL import Image
from transformers import CLIPImageProcessorPil, LlavaImageProcessorPil, Qwen2VLImageProcessorPil

from reroute.backbones import grids_for
from reroute.backbones.grids import TokenGrid, llava_grids, llava_region, qwen_grids

IMAGE = 7  # an image-token id for hand-written prompts


def _bright_box_back(processor, original: Image.Image, region, threshold=0.5):
    """The bright pixels of the processed frame, mapped back through ``region`` to original pixels."""
    pixels = processor(images=[original], return_tensors="pt")["pixel_values"][0].mean(dim=0)
    ys, xs = torch.nonzero(pixels > threshold, as_tuple=True)
    height, width = pixels.shape
    x0, y0, x1, y1 = region
    sx, sy = (x1 - x0) / width, (y1 - y0) / height
    return (x0 + int(xs.min()) * sx, y0 + int(ys.min()) * sy, x0 + (int(xs.max()) + 1) * sx, y0 + (int(ys.max()) + 1) * sy)


def _picture(size=(64, 48), box=(20, 12, 44, 36)):
    image = Image.new("RGB", size, (0, 0, 0))
    image.paste((255, 255, 255), box)
    return image


@pytest.mark.parametrize(
    "processor, expected",
    [
        # pad 64 x 48 to 64 x 64 (8 rows above and below), resize to 32, crop 32: the frame sticks out
        (LlavaImageProcessorPil(do_pad=True, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), (0, -8, 64, 56)),
        # resize the short side to 32 (-> 42 x 32), centre-crop 32: left offset 5 of 42 -> 7.62 of 64
        (LlavaImageProcessorPil(do_pad=False, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
         (5 * 64 / 42, 0, (5 + 32) * 64 / 42, 48)),
        # the demo's processor: resize to a fixed square, nothing cropped
        (CLIPImageProcessorPil(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32}), (0, 0, 64, 48)),
    ],
)
def test_llava_region_undoes_the_processor(processor, expected):
    region = llava_region((64, 48), processor)
    assert region == pytest.approx(expected, abs=1e-9)
    # what the processor made of a white rectangle lands back on it (within one processed pixel)
    back = _bright_box_back(processor, _picture(), region)
    cell = (region[2] - region[0]) / 32
    assert back == pytest.approx((20, 12, 44, 36), abs=cell + 1e-6)


def test_llava_grids_split_the_image_tokens_per_image_in_raster_order():
    ids = [0, 0, 1, 5] + [IMAGE] * 16 + [9] + [IMAGE] * 16 + [8, 8]  # left padding, two 4 x 4 images
    grids = llava_grids(torch.tensor(ids), IMAGE, [(32, 32), (64, 48)])
    assert [(g.rows, g.cols, g.image_index) for g in grids] == [(4, 4, 0), (4, 4, 1)]
    assert grids[0].positions == tuple(range(4, 20)) and grids[1].positions == tuple(range(21, 37))
    assert grids[1].region == (0, 0, 64, 48)  # no image processor: the whole image
    assert grids[0].cell_of()[4 + 6] == (1, 2)  # the 7th token of the span: row 1, column 2
    with pytest.raises(ValueError, match="^12 image tokens per image do not form a square grid"):
        llava_grids([IMAGE] * 12, IMAGE, [(32, 32)])
    with pytest.raises(ValueError, match="^32 image tokens cannot be split evenly over 3 images$"):
        llava_grids(ids, IMAGE, [(1, 1)] * 3)


def test_qwen_grids_map_merged_tokens_with_odd_sides_over_the_whole_image():
    processor = Qwen2VLImageProcessorPil(min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28)
    sizes = [(84, 140), (100, 60)]
    thw = processor(images=[Image.new("RGB", s) for s in sizes], return_tensors="pt")["image_grid_thw"]
    assert thw.tolist() == [[1, 10, 6], [1, 4, 8]]  # merged: 5 x 3 (odd sides) and 2 x 4
    ids = [1, 2, QWEN_START] + [QWEN_IMAGE] * 15 + [QWEN_END, 3, QWEN_START] + [QWEN_IMAGE] * 8 + [QWEN_END, 4]
    grids = qwen_grids(ids, QWEN_IMAGE, thw, sizes)
    assert [(g.rows, g.cols, g.image_index) for g in grids] == [(5, 3, 0), (2, 4, 1)]
    assert grids[0].positions == tuple(range(3, 18)) and grids[1].positions == tuple(range(21, 29))
    assert grids[0].region == (0, 0, 84, 140)
    assert grids[0].cell_box(4, 2) == pytest.approx((56, 112, 84, 140))  # the last merged token: bottom-right 28 x 28
    assert grids[0].cell_of()[3 + 7] == (2, 1)
    with pytest.raises(ValueError, match=r"^the image grids \[\(1, 10, 6\)\] give 15 merged tokens but the prompt has 23"):
        qwen_grids(ids, QWEN_IMAGE, thw[:1], sizes[:1])


def test_qwen_grids_of_a_video_give_one_grid_per_temporal_slice():
    ids = [QWEN_START] + [QWEN_IMAGE] * 12 + [QWEN_END]
    grids = qwen_grids(ids, QWEN_IMAGE, [[2, 4, 6]], [(60, 40)])
    assert [(g.rows, g.cols, g.positions[0]) for g in grids] == [(2, 3, 1), (2, 3, 7)]


def test_grids_for_a_batch_take_each_samples_own_images():
    model = FAMILIES["qwen2_5_vl"].make_model()
    prompts = [qwen_prompt(image_grids=((1, 4, 4),)), qwen_prompt(image_grids=((1, 6, 10), (1, 4, 8)), seed=1)]
    inputs = qwen_batch(prompts, "left")
    grids = grids_for(model, None, inputs, [(50, 30), (40, 40)], sample=1)
    assert [(g.rows, g.cols) for g in grids] == [(3, 5), (2, 4)]
    ids = inputs["input_ids"][1].tolist()
    assert list(grids[0].positions) + list(grids[1].positions) == [i for i, t in enumerate(ids) if t == QWEN_IMAGE]


def test_cells_in_a_box_are_those_whose_centre_lies_inside():
    grid = TokenGrid(positions=tuple(range(15)), rows=3, cols=5, region=(0, 0, 50, 30))  # 10 x 10 cells
    inside = grid.in_box((10, 0, 25, 15))  # centres x 15 (in), 25 (on the edge: in), y 5 (in), 15 (edge: in)
    expected = np.zeros((3, 5), dtype=bool)
    expected[0:2, 1:3] = True
    np.testing.assert_array_equal(inside, expected)
    assert grid.frame_to_image((0.5, 0.5, 1.0, 1.0)) == (25, 15, 50, 30)
    assert grid.frame_to_image((14, 14, 28, 28), frame=(28, 28)) == (25, 15, 50, 30)
    with pytest.raises(ValueError, match="^a 3 x 5 grid needs 15 positions, got 2$"):
        TokenGrid(positions=(1, 2), rows=3, cols=5, region=(0, 0, 1, 1))
