"""The decision analysis equals numbers computed by hand on constructed traces."""

from __future__ import annotations

import json
import math

import pytest
import torch

from reroute.viz.statistics import (
    RunTraces,
    TracedSample,
    analysis_json,
    analyze_traces,
    format_analysis,
    format_summaries,
    rank_correlations,
    reentry_rates,
    spearman,
    summarize_runs,
)
from reroute.backbones.grids import TokenGrid
from reroute.runtime.trace import DecisionScores, SampleTrace, Trace

# four visual tokens at prompt positions 5..8 on a 2 x 2 grid of 10-pixel cells:
# centres (5, 5) (15, 5) (5, 15) (15, 15) for positions 5, 6, 7, 8
GRID = TokenGrid(positions=(5, 6, 7, 8), rows=2, cols=2, region=(0, 0, 20, 20))
LEFT_COLUMN = (0, 0, 12, 20)  # holds the centres of positions 5 and 7


def _scores(positions, values):
    return DecisionScores(torch.tensor(positions), torch.tensor(values, dtype=torch.float32))


def _sample(selected, scores=None, decision_layers=(1, 3, 6), num_layers=8):
    """A trace of an 8-layer decoder: every visual token before layer 1, then each stage's selection."""
    per_layer = [4 if (stage := sum(d <= i for d in decision_layers) - 1) < 0 else len(selected[stage]) for i in range(num_layers)]
    return SampleTrace(
        routed=True, num_visual=4, visual_per_layer=tuple(per_layer), tokens_per_layer=tuple(n + 5 for n in per_layer),
        selected=tuple(tuple(s) for s in selected), scores=scores,
    )


# reroute, k = 2 at each decision; every visual token is a candidate every time
REROUTE_SCORES = (
    _scores([5, 6, 7, 8], [0.1, 0.4, 0.3, 0.2]),
    _scores([5, 6, 7, 8], [0.4, 0.3, 0.2, 0.1]),
    _scores([5, 6, 7, 8], [0.2, 0.2, 0.5, 0.1]),  # a tie: 5 and 6 share ranks 2 and 3 -> 2.5
)
REROUTE = _sample([(6, 7), (5, 6), (5, 7)], REROUTE_SCORES)
# remove, k = 3, 2, 1; candidates are the previous decision's survivors
REMOVE = _sample(
    [(5, 6, 7), (6, 7), (6,)],
    (_scores([5, 6, 7, 8], [0.4, 0.3, 0.2, 0.1]), _scores([5, 6, 7], [0.1, 0.3, 0.2]), _scores([6, 7], [0.5, 0.4])),
)


def test_reentry_rate_by_hand():
    assert reentry_rates(REROUTE) == [None, 0.5, 0.5]  # {5,6}-{6,7} = {5}: 1 of 2; {5,7}-{5,6} = {7}: 1 of 2
    assert reentry_rates(REMOVE) == [None, 0.0, 0.0]


def test_rank_correlation_by_hand():
    # ranks (1 = lowest) 1,4,3,2 vs 4,3,2,1: d^2 = 9+1+1+1 = 12, rho = 1 - 6*12/(4*15) = -0.2
    # ranks 4,3,2,1 vs 2.5,2.5,4,1: Pearson of ranks = 1.5 / sqrt(5 * 4.5) = 1/sqrt(10)
    rho = rank_correlations(REROUTE)
    assert rho[0] is None and rho[1] == pytest.approx(-0.2) and rho[2] == pytest.approx(1 / math.sqrt(10))
    # remove: common candidates 5,6,7 with ranks 3,2,1 vs 1,3,2: d^2 = 4+1+1, rho = 1 - 36/24 = -0.5;
    # then only 6 and 7 are common: undefined
    assert rank_correlations(REMOVE) == [None, pytest.approx(-0.5), None]
    assert spearman([1, 2, 3], [5, 5, 5]) is None  # constant scores


def test_analysis_over_runs_by_hand():
    other = _sample([(5, 6), (5, 6), (7, 8)], REROUTE_SCORES)  # re-entry 0 then 1; not a grounding sample
    runs = [
        RunTraces("reroute", "reroute", (1, 3, 6), (TracedSample(REROUTE, (GRID,), LEFT_COLUMN), TracedSample(other, (GRID,)))),
        RunTraces("remove", "remove", (1, 3, 6), (TracedSample(REMOVE, (GRID,), LEFT_COLUMN),)),
    ]
    rows = analyze_traces(runs)
    table = {(r.run, r.decision): r for r in rows}
    ours = [table[("reroute", d)] for d in range(3)]
    assert [r.reentry for r in ours] == [None, 0.25, 0.75]  # means of (0.5, 0) and (0.5, 1)
    assert [r.spearman for r in ours] == [None, pytest.approx(-0.2), pytest.approx(1 / math.sqrt(10))]
    # GT box = positions 5 and 7: active (6,7) -> 1/2, (5,6) -> 1/2, (5,7) -> 1
    assert [r.box_active for r in ours] == [0.5, 0.5, 1.0] and [r.n_box for r in ours] == [1, 1, 1]
    assert [r.mean_keep for r in ours] == [2, 2, 2] and ours[1].n_spearman == 2
    theirs = [table[("remove", d)] for d in range(3)]
    # (5,6,7) -> 1; (6,7) -> 1/2; (6,) -> 0
    assert [r.box_active for r in theirs] == [1.0, 0.5, 0.0]
    assert [r.spearman for r in theirs] == [None, pytest.approx(-0.5), None] and theirs[2].n_spearman == 0
    assert [r.layer for r in theirs] == [1, 3, 6]

    text = format_analysis(rows)
    assert "| reroute | reroute | 2 (3) | 2.0 | 0.250 | -0.200 | 0.500 | 2 (1) |" in text.splitlines()
    assert "| remove | remove | 3 (6) | 1.0 | 0.000 | - | 0.000 | 1 (1) |" in text.splitlines()
    summaries = summarize_runs(runs)
    # avg_T: (4 + 7 * 2) / 8 for both reroute samples; remove (4 + 2*3 + 3*2 + 2*1) / 8
    assert [s.avg_t for s in summaries] == [2.25, 2.25]
    # box over the 8 layers: reroute 1 | 1/2 1/2 | 1/2 1/2 1/2 | 1 1 -> 5.5 / 8; remove 1 | 1 1 | 1/2 x3 | 0 0 -> 4.5 / 8
    assert [s.box_active_layer_mean for s in summaries] == [5.5 / 8, 4.5 / 8]
    assert [s.n_box for s in summaries] == [1, 1]
    assert "| reroute | reroute | 1, 3, 6 | 2.25 | 0.688 | 2 (1) |" in format_summaries(summaries).splitlines()
    saved = json.loads(analysis_json(rows, {"n": 3}, summaries))
    assert saved["meta"] == {"n": 3} and saved["rows"][1]["reentry"] == 0.25 and saved["runs"][1]["avg_t"] == 2.25


def test_run_traces_from_handle_traces_and_errors():
    trace = Trace("reroute", (1, 3, 6), (REROUTE, REROUTE), cache_lengths=(9,) * 8)
    run = RunTraces.from_traces("mine", [trace, trace], grids=[(GRID,)] * 4, boxes=[LEFT_COLUMN, None, None, None])
    assert run.action == "reroute" and len(run.samples) == 4 and run.samples[0].box == LEFT_COLUMN
    with pytest.raises(ValueError, match="^4 traced samples but 1 grid lists and 4 boxes$"):
        RunTraces.from_traces("mine", [trace, trace], grids=[(GRID,)], boxes=[None] * 4)
    plain = _sample([(6, 7), (5, 6)], decision_layers=(1, 3))
    with pytest.raises(ValueError, match=r"^this trace has no scores: run with reroute.apply\(model, config, record_scores=True\)$"):
        rank_correlations(plain)
    # without scores the analysis still gives re-entry and box numbers; the correlation column is empty
    rows = analyze_traces([RunTraces("plain", "reroute", (1, 3), (TracedSample(plain, (GRID,), LEFT_COLUMN),))])
    assert [r.reentry for r in rows] == [None, 0.5] and [r.spearman for r in rows] == [None, None]


def test_box_activity_before_the_first_decision_counts_only_what_entered_the_decoder():
    """A vision stage that dropped position 7 (in the box) before the decoder: the layers before the
    first decision hold 1 of the box's 2 patches, not all of them; without scores it cannot be told."""
    from reroute.viz.statistics import box_activity_per_layer, entered_box_share

    after_stage = SampleTrace(
        routed=True, num_visual=3, visual_per_layer=(3, 1, 1), tokens_per_layer=(8, 6, 6), selected=((5,),),
        scores=(_scores([5, 6, 8], [0.5, 0.3, 0.2]),),
    )
    sample = TracedSample(after_stage, (GRID,), LEFT_COLUMN)
    assert entered_box_share(sample) == 0.5
    assert box_activity_per_layer(sample, (1,)) == [0.5, 0.5, 0.5]
    unscored = TracedSample(SampleTrace(**{**after_stage.__dict__, "scores": None}), (GRID,), LEFT_COLUMN)
    assert entered_box_share(unscored) is None and box_activity_per_layer(unscored, (1,)) is None
    everything = TracedSample(REROUTE, (GRID,), LEFT_COLUMN)  # no vision stage: every patch entered
    assert entered_box_share(everything) == 1.0
