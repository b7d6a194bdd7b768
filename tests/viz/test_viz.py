"""The decisions figure is built from the trace: what each panel draws equals the trace's selected
positions (and recorded scores) mapped to the token grid, for LLaVA's square grid and a Qwen2.5-VL
grid with odd sides."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.patches import Rectangle
from tests.helpers.models import LLAVA_IMAGE_TOKEN, QWEN_IMAGE, FAMILIES, llava_batch, llava_prompt, qwen_batch, qwen_prompt

import reroute
from reroute import RoutingConfig
from reroute.backbones.grids import llava_grids, qwen_grids
from reroute.viz import ACTIVE, DEFERRED, REENTERED, REMOVED, RunView, plot_decisions

CONFIGS = {
    "remove": RoutingConfig("remove", (1, 3, 4), (0.5, 0.25, 0.1)),
    "reroute": RoutingConfig("reroute", (1, 3, 4), (0.3, 0.3, 0.15)),
}


def _traces(model, inputs):
    runs = []
    for name, config in CONFIGS.items():
        with reroute.apply(model, config, record_scores=True) as handle, torch.no_grad():
            model(**inputs)
        runs.append(RunView.from_trace(handle.trace, name=name, answer="a", answer_box=(1, 1, 5, 5)))
    return runs


def _expected_states(selected, cell_of_position, shape, action):
    """Independent of reroute.viz: per decision, the state of each cell from the selected positions."""
    out, previous = [], set()
    for s, chosen in enumerate(selected):
        states = np.full(shape, DEFERRED if action == "reroute" else REMOVED)
        for p in chosen:
            if p in cell_of_position:
                states[cell_of_position[p]] = ACTIVE if (s == 0 or p in previous) else REENTERED
        out.append(states)
        previous = set(chosen)
    return out


def _check_figure(fig, runs, grids, cells_of):
    """Every state / score image and every outlined cell of the figure, against the traces."""
    state_images = [im for ax in fig.axes for im in ax.get_images() if im.get_gid() == "states"]
    score_images = [im for ax in fig.axes for im in ax.get_images() if im.get_gid() == "scores"]
    state_axes = [ax for ax in fig.axes if any(im.get_gid() == "states" for im in ax.get_images())]
    decisions = len(CONFIGS["remove"].decision_layers)
    assert len(state_images) == len(score_images) == len(grids) * len(runs) * decisions
    i = 0
    for grid, cell_of in zip(grids, cells_of):
        x0, y0, x1, y1 = grid.region
        for run in runs:
            expected = _expected_states(run.sample.selected, cell_of, grid.shape, run.action)
            for s in range(decisions):
                drawn = np.asarray(state_images[i].get_array())
                np.testing.assert_array_equal(drawn, expected[s])
                assert state_images[i].get_extent() == pytest.approx([x0, x1, y1, y0])
                # outlined cells (active and active again) are exactly the selected ones of this image
                outlined = {
                    (round(p.get_y()), round(p.get_x()))
                    for p in state_axes[i].patches
                    if isinstance(p, Rectangle) and p.get_linestyle() == "-"
                }
                w, h = grid.cell_size()
                selected_cells = {
                    (round(y0 + cell_of[p][0] * h), round(x0 + cell_of[p][1] * w))
                    for p in run.sample.selected[s]
                    if p in cell_of
                }
                assert outlined == selected_cells
                # the heat map: log10 of each candidate's recorded score at its cell, nothing elsewhere
                heat = np.ma.filled(np.ma.asarray(score_images[i].get_array()).astype(float), np.nan)
                want = np.full(grid.shape, np.nan)
                scores = run.sample.scores[s]
                for p, v in zip(scores.positions.tolist(), scores.scores.tolist()):
                    if p in cell_of:
                        want[cell_of[p]] = np.log10(v)
                np.testing.assert_allclose(heat, want, rtol=1e-6)
                i += 1
    assert any((np.asarray(im.get_array()) == REENTERED).any() for im in state_images)  # reroute re-entered something


def test_llava_square_grid_figure_draws_the_traced_decisions(tmp_path):
    model = FAMILIES["llava"].make_model()
    inputs = llava_batch([llava_prompt(2, seed=5)])
    runs = _traces(model, inputs)
    grids = llava_grids(inputs["input_ids"][0], LLAVA_IMAGE_TOKEN, [(32, 32), (32, 32)])
    ids = inputs["input_ids"][0].tolist()
    image_positions = [j for j, t in enumerate(ids) if t == LLAVA_IMAGE_TOKEN]  # 16 per image, raster order
    cells_of = [{p: divmod(i, 4) for i, p in enumerate(image_positions[k * 16 : (k + 1) * 16])} for k in range(2)]
    images = [np.zeros((32, 32, 3)), np.ones((32, 32, 3))]
    fig = plot_decisions(images, runs, grids, title="t", target_box=(0, 0, 8, 8))
    _check_figure(fig, runs, grids, cells_of)
    plot_decisions(images[:1], runs, grids[:1], path=str(tmp_path / "f.svg"))
    assert (tmp_path / "f.svg").read_text().lstrip().startswith("<?xml")


def test_qwen_odd_grid_figure_draws_the_traced_decisions():
    model = FAMILIES["qwen2_5_vl"].make_model()
    prompt = qwen_prompt(image_grids=((1, 6, 10), (1, 2, 6)), seed=3)  # merged 3 x 5 and 1 x 3
    inputs = qwen_batch([prompt])
    runs = _traces(model, inputs)
    sizes = [(100, 60), (90, 30)]
    grids = qwen_grids(inputs["input_ids"][0], QWEN_IMAGE, inputs["image_grid_thw"], sizes)
    ids = inputs["input_ids"][0].tolist()
    image_positions = [j for j, t in enumerate(ids) if t == QWEN_IMAGE]
    cells_of = [
        {p: divmod(i, 5) for i, p in enumerate(image_positions[:15])},
        {p: divmod(i, 3) for i, p in enumerate(image_positions[15:])},
    ]
    images = [np.zeros((60, 100, 3)), np.zeros((30, 90, 3))]
    fig = plot_decisions(images, runs, grids)
    _check_figure(fig, runs, grids, cells_of)


def test_a_trace_without_scores_is_refused_for_heat_maps():
    from reroute.viz import score_grids

    model = FAMILIES["llava"].make_model()
    inputs = llava_batch([llava_prompt(1)])
    with reroute.apply(model, CONFIGS["remove"]) as handle, torch.no_grad():
        model(**inputs)
    grid = llava_grids(inputs["input_ids"][0], LLAVA_IMAGE_TOKEN, [(32, 32)])[0]
    with pytest.raises(ValueError, match=r"^this trace has no scores: run with reroute.apply\(model, config, record_scores=True\)$"):
        score_grids(handle.trace[0], grid)


@pytest.mark.parametrize("action", ["remove", "reroute"])
def test_tokens_a_vision_stage_dropped_are_removed_under_either_action(action):
    """Cells whose token never reached the decoder (not a candidate at the first decision) are
    REMOVED, not DEFERRED; the others follow the action's rule."""
    from reroute.backbones.grids import TokenGrid
    from reroute.runtime.trace import DecisionScores, SampleTrace
    from reroute.viz import decision_states

    grid = TokenGrid(positions=tuple(range(10, 14)), rows=2, cols=2, region=(0.0, 0.0, 2.0, 2.0))
    entered = torch.tensor([10, 11, 13])  # position 12 was dropped before the decoder
    sample = SampleTrace(
        routed=True, num_visual=4, visual_per_layer=(3, 1), tokens_per_layer=(5, 3), selected=((11,),),
        scores=(DecisionScores(positions=entered, scores=torch.tensor([0.1, 0.7, 0.2])),),
    )
    (states,) = decision_states(sample, grid, action)
    other = DEFERRED if action == "reroute" else REMOVED
    assert states.tolist() == [[other, ACTIVE], [REMOVED, other]]
