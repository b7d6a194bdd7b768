"""Nüwa stage 1 (docs/semantics.md §6 faithfulness): cells, anchors, aggregation against slow loops; end to end per family."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.helpers.nuwa_models import nuwa_llava, nuwa_qwen, qwen_pixels

from reroute.methods.nuwa.aggregate import aggregate_anchors, high_saliency, llava_radius, qwen_radius
from reroute.methods.nuwa.features import llava_vision_features, qwen_vision_features
from reroute.methods.nuwa.params import NuwaParams, qwen_ratios
from reroute.methods.nuwa.select import cell_candidates, select_anchors
from reroute.methods.nuwa.stage1 import nuwa_llava_stage1, nuwa_qwen_stage1


# ----------------------------------------------------------------------------- slow references
def slow_candidates(saliency: list[list[float]], per_cell: int) -> set[int]:
    """Per 2 x 2 cell (cut from the top-left; the last row/column alone on odd sides), the n best by (-a, raster)."""
    height, width = len(saliency), len(saliency[0])
    chosen = set()
    for top in range(0, height, 2):
        for left in range(0, width, 2):
            cell = [(r * width + c) for r in (top, top + 1) for c in (left, left + 1) if r < height and c < width]
            cell.sort(key=lambda i: (-saliency[i // width][i % width], i))
            chosen.update(cell[:per_cell])
    return chosen


def slow_anchors(saliency: list[float], candidates: set[int], count: int) -> list[int]:
    return sorted(sorted(candidates, key=lambda i: (-saliency[i], i))[:count])


def slow_quantile(values: list[float], q: float) -> float:
    """Linear interpolation between the order statistics at q * (K - 1) (numpy's and torch's default)."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def slow_aggregate(x, f, saliency, anchors, grid, radius, quantile, rule, self_in_denominator=False):
    """The formula of docs/semantics.md §6 with a double loop in float64."""
    x, f = x.double(), f.double()
    width = grid[1]
    threshold = slow_quantile([float(saliency[i]) for i in anchors], quantile)
    rows = []
    for i in anchors:
        if float(saliency[i]) >= threshold:
            rows.append(x[i])
            continue
        total, acc = 0.0, torch.zeros_like(x[i])
        for j in range(len(x)):
            if j == i:
                continue
            norm = max(float(f[i].norm()), 1e-12) * max(float(f[j].norm()), 1e-12)
            cos = float(f[i] @ f[j]) / norm
            dist = math.hypot(i // width - j // width, i % width - j % width)
            w = max(cos, 0.0) * max(0.0, 1 - dist / radius)
            total += w
            acc += w * x[j]
        if rule == "convex":
            rows.append((x[i] + acc) / (1 + total))
        elif total == 0:
            rows.append(x[i])
        else:
            rows.append(x[i] + acc / (total + (1 if self_in_denominator else 0)))
    return torch.stack(rows)


# ----------------------------------------------------------------------------- cells and anchors
@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 7), width=st.integers(1, 7), per_cell=st.integers(1, 4), count=st.integers(1, 40),
    seed=st.integers(0, 10_000),
)
def test_cells_and_anchors_equal_slow_selection(height, width, per_cell, count, seed):
    g = torch.Generator().manual_seed(seed)
    saliency = torch.randint(0, 4, (height, width), generator=g).float()  # few values: many ties
    candidates = cell_candidates(saliency, per_cell)
    expected = slow_candidates(saliency.tolist(), per_cell)
    assert set(torch.nonzero(candidates.flatten()).flatten().tolist()) == expected
    anchors = select_anchors(saliency.flatten(), candidates.flatten(), count)
    assert anchors.tolist() == slow_anchors(saliency.flatten().tolist(), expected, count)
    # at most n anchors per cell, and never more than K
    cells = [(i // width // 2, i % width // 2) for i in anchors.tolist()]
    assert max(cells.count(c) for c in set(cells)) <= per_cell
    assert len(anchors) == min(count, len(expected))


def test_ties_in_a_cell_go_to_the_lower_raster_index():
    saliency = torch.tensor([[1.0, 2.0], [2.0, 2.0]])
    assert cell_candidates(saliency, 2).tolist() == [[False, True], [True, False]]


# ----------------------------------------------------------------------------- aggregation
def test_quantile_convention_is_linear_interpolation():
    values = torch.tensor([0.3, 0.1, 0.4, 0.2, 0.9, 0.5, 0.7])
    for q in (0.1, 0.55):
        threshold = slow_quantile(values.tolist(), q)
        assert high_saliency(values, q).tolist() == [v >= threshold for v in values.tolist()]
    assert high_saliency(values, 0.55).tolist() == [False, False, False, False, True, True, True]  # 0.4 + 0.3 * (0.5 - 0.4)


@pytest.mark.parametrize(
    "rule,self_in_denominator,quantile",
    [("residual", False, 0.55), ("residual", True, 0.55), ("convex", False, 0.1), ("convex", False, 0.55)],
)
@pytest.mark.parametrize("grid", [(6, 6), (3, 5)])
def test_aggregation_equals_the_double_loop_and_keeps_high_anchors_bit_identical(rule, self_in_denominator, quantile, grid):
    g = torch.Generator().manual_seed(7)
    n = grid[0] * grid[1]
    x = torch.randn(n, 5, generator=g)
    f = torch.randn(n, 3, generator=g) + 0.5  # mostly positive cosines, some negative
    saliency = torch.rand(n, generator=g)
    anchors = torch.tensor(sorted(torch.randperm(n, generator=g)[: n // 2].tolist()))
    radius = llava_radius() / 4 if rule == "residual" else qwen_radius(grid)  # a radius that cuts off some patches
    got = aggregate_anchors(x, f, saliency, anchors, grid, radius, quantile, rule, self_in_denominator)
    expected = slow_aggregate(x, f, saliency, anchors.tolist(), grid, radius, quantile, rule, self_in_denominator)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)
    high = high_saliency(saliency[anchors], quantile)
    assert 0 < int(high.sum()) < len(anchors)
    assert torch.equal(got[high], x[anchors][high])  # bit-identical
    assert not torch.allclose(got[~high], x[anchors][~high])  # merged ones moved


def test_anchor_with_no_similar_neighbour_passes_unchanged():
    x = torch.randn(4, 3)
    f = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])  # patch 0 is anti-similar to all
    saliency = torch.tensor([0.1, 0.9, 0.8, 0.7])
    got = aggregate_anchors(x, f, saliency, torch.tensor([0, 1]), (2, 2), llava_radius(), 0.55, "residual")
    assert torch.equal(got[0], x[0])


def test_half_precision_features_keep_their_dtype_and_high_anchors_exact():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 4, generator=g).to(torch.bfloat16)
    saliency, anchors = torch.rand(16, generator=g), torch.arange(0, 16, 2)
    got = aggregate_anchors(x, torch.randn(16, 4, generator=g), saliency, anchors, (4, 4), 3.0, 0.55, "residual")
    assert got.dtype == torch.bfloat16
    high = high_saliency(saliency[anchors], 0.55)
    assert torch.equal(got[high], x[anchors][high])


def test_qwen_radius_uses_the_padded_diagonal():
    assert qwen_radius((3, 5)) == pytest.approx(0.8 * math.sqrt(3**2 + 5**2))  # padded to 4 x 6
    assert qwen_radius((4, 6)) == pytest.approx(0.8 * math.sqrt(3**2 + 5**2))


# ----------------------------------------------------------------------------- end to end
@torch.no_grad()
def test_llava_stage1_end_to_end_equals_the_slow_pipeline():
    model = nuwa_llava()
    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    params = NuwaParams(per_cell=2, anchors=11, keep=3)
    got = nuwa_llava_stage1(model, pixels, params)
    for image, result in zip(llava_vision_features(model, pixels), got):
        sal = image.saliency
        expected_kept = slow_anchors(sal.tolist(), slow_candidates(sal.view(6, 6).tolist(), 2), 11)
        assert result.kept.tolist() == expected_kept
        merged = slow_aggregate(image.features, image.similarity, sal, expected_kept, (6, 6), math.sqrt(280), 0.55, "residual")
        tokens = model.model.multi_modal_projector(merged.float()[None])[0]
        torch.testing.assert_close(result.tokens, tokens, atol=1e-5, rtol=1e-5)
        assert result.tokens.shape == (11, model.config.text_config.hidden_size)
        assert torch.equal(result.saliency, sal)


@torch.no_grad()
def test_llava_batch_equals_images_one_by_one():
    model = nuwa_llava()
    pixels = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(6))
    params = NuwaParams(per_cell=1, anchors=7, keep=2)
    batch = nuwa_llava_stage1(model, pixels, params)
    for b in range(3):
        alone = nuwa_llava_stage1(model, pixels[b : b + 1], params)[0]
        assert torch.equal(batch[b].kept, alone.kept)
        torch.testing.assert_close(batch[b].tokens, alone.tokens, atol=1e-6, rtol=0)


QWEN_GRIDS = [(1, 8, 12), (1, 6, 10), (1, 10, 6), (1, 2, 2)]  # merged 4 x 6, 3 x 5, 5 x 3, 1 x 1


@torch.no_grad()
@pytest.mark.parametrize("keep", [0.25, 0.75])
def test_qwen_stage1_end_to_end_equals_the_slow_pipeline(keep):
    model = nuwa_qwen()
    pixels, grids = qwen_pixels(QWEN_GRIDS, seed=4)
    ratios = qwen_ratios(keep)
    got = nuwa_qwen_stage1(model, pixels, grids, ratios)
    for image, result in zip(qwen_vision_features(model, pixels, grids), got):
        height, width = image.grid
        n = height * width
        sal = image.saliency
        candidates = slow_candidates(sal.view(height, width).tolist(), ratios.per_cell)
        expected_kept = slow_anchors(sal.tolist(), candidates, math.ceil(n * ratios.stage1_fraction))
        assert result.kept.tolist() == expected_kept
        assert all(0 <= i < n for i in expected_kept)
        radius = 0.8 * math.hypot(height + height % 2 - 1, width + width % 2 - 1)
        merged = slow_aggregate(image.features, image.similarity, sal, expected_kept, image.grid, radius, 0.1, "convex")
        torch.testing.assert_close(result.tokens.double(), merged, atol=1e-5, rtol=1e-5)
        assert result.tokens.shape == (len(expected_kept), 64)


@torch.no_grad()
def test_qwen_several_images_equal_images_one_by_one():
    model = nuwa_qwen()
    pixels, grids = qwen_pixels(QWEN_GRIDS, seed=8)
    together = nuwa_qwen_stage1(model, pixels, grids, qwen_ratios(0.5))
    start = 0
    for i, (t, h, w) in enumerate(QWEN_GRIDS):
        stop = start + t * h * w
        alone = nuwa_qwen_stage1(model, pixels[start:stop], grids[i : i + 1], qwen_ratios(0.5))[0]
        assert torch.equal(together[i].kept, alone.kept)
        torch.testing.assert_close(together[i].tokens, alone.tokens, atol=1e-5, rtol=0)
        start = stop


@torch.no_grad()
def test_half_precision_models_take_float32_inputs_and_give_float32_saliency():
    llava = nuwa_llava().to(torch.bfloat16)
    result = nuwa_llava_stage1(llava, torch.randn(1, 3, 48, 48), NuwaParams(per_cell=1, anchors=5, keep=2))[0]
    assert (result.saliency.dtype, result.tokens.dtype, result.tokens.shape) == (torch.float32, torch.bfloat16, (5, 48))
    qwen = nuwa_qwen().to(torch.bfloat16)
    pixels, grids = qwen_pixels([(1, 6, 10)])
    result = nuwa_qwen_stage1(qwen, pixels, grids, qwen_ratios(0.5))[0]
    assert (result.saliency.dtype, result.tokens.dtype, result.tokens.shape) == (torch.float32, torch.bfloat16, (9, 64))
