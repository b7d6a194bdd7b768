"""Numbers about decisions across depth, from traces (docs/semantics.md, "Decision analysis").

Per decision ``s`` of a run, averaged over samples (each sample weighs the same; a sample
where a number is undefined is left out of that mean):

* **re-entry rate**: the share of the tokens selected at ``s`` that were not selected at
  ``s - 1``. Under ``reroute`` every visual token is a candidate at every decision, so these
  are exactly the tokens deferred at ``s - 1``; under ``remove`` it is 0 by construction.
  Undefined at the first decision.
* **rank correlation**: Spearman's rho between the scores at ``s - 1`` and at ``s`` of the
  candidates scored at both decisions (reroute: every visual token; remove: the survivors of
  ``s - 1``). Needs recorded scores (``reroute.apply(..., record_scores=True)``). Ties get
  average ranks; undefined with fewer than 3 common candidates or constant scores.
* **GT-box activity** (grounding samples): the share of the ground-truth box's patches that
  are active in stage ``s``; a patch is in the box when its cell's centre lies inside the
  box (edges included), on the image the box belongs to.

Per run (`summarize_runs`): the realised avg_T and the GT-box activity averaged over all decoder
layers (1 in the layers before the first decision, where every visual token takes part), the
box's counterpart of avg_T: two runs at the same budget can be compared on it directly.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from reroute.backbones.grids import Box, TokenGrid
from reroute.runtime.trace import SampleTrace, Trace


@dataclass(frozen=True)
class TracedSample:
    """One sample's decisions and what the analysis needs to place them on its image.

    trace: the sample's `SampleTrace` (with scores for the rank correlation).
    grids: its images' token grids (`reroute.backbones.grids`), needed for the GT-box activity.
    box: the ground-truth box in original-image pixels of image ``box_image``; None when the
        sample is not a grounding sample.
    """

    trace: SampleTrace
    grids: tuple[TokenGrid, ...] = ()
    box: Box | None = None
    box_image: int = 0


@dataclass(frozen=True)
class RunTraces:
    """The traced samples of one run (one configuration over a dataset)."""

    name: str
    action: str
    decision_layers: tuple[int, ...]
    samples: tuple[TracedSample, ...]

    @classmethod
    def from_traces(
        cls,
        name: str,
        traces: Iterable[Trace],
        grids: Sequence[Sequence[TokenGrid]] | None = None,
        boxes: Sequence[Box | None] | None = None,
    ) -> RunTraces:
        """From the handle's traces of consecutive batches; ``grids``/``boxes`` per sample, in the same order."""
        traces = list(traces)
        if not traces:
            raise ValueError("no traces given: run the routed model on at least one batch first")
        samples = [s for t in traces for s in t.samples]
        grids = list(grids) if grids is not None else [()] * len(samples)
        boxes = list(boxes) if boxes is not None else [None] * len(samples)
        if not (len(grids) == len(boxes) == len(samples)):
            raise ValueError(f"{len(samples)} traced samples but {len(grids)} grid lists and {len(boxes)} boxes")
        first = traces[0]
        return cls(
            name=name,
            action=first.action,
            decision_layers=tuple(first.decision_layers),
            samples=tuple(TracedSample(s, tuple(g), b) for s, g, b in zip(samples, grids, boxes)),
        )


@dataclass(frozen=True)
class DecisionStats:
    """One row of the analysis: decision ``decision`` (0-based) of run ``run``.

    None marks a number that is undefined for every sample (e.g. re-entry at the first decision).
    """

    run: str
    action: str
    decision: int
    layer: int
    mean_keep: float
    reentry: float | None
    spearman: float | None
    box_active: float | None
    n_samples: int
    n_spearman: int
    n_box: int
    num_layers: int = 0


@dataclass(frozen=True)
class RunSummary:
    """One run over the dataset: realised avg_T and the GT-box activity averaged over decoder layers."""

    run: str
    action: str
    decision_layers: tuple[int, ...]
    avg_t: float
    box_active_layer_mean: float | None
    n_samples: int
    n_box: int


# ----------------------------------------------------------------------------- per-sample numbers


def reentry_rates(sample: SampleTrace) -> list[float | None]:
    """Per decision, the share of its selected tokens not selected at the previous decision (None first)."""
    rates: list[float | None] = [None]
    for prev, now in zip(sample.selected, sample.selected[1:]):
        rates.append(len(set(now) - set(prev)) / len(now) if now else None)
    return rates[: len(sample.selected)]


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of their ranks."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rho (Pearson correlation of average ranks); None when undefined."""
    if len(a) != len(b):
        raise ValueError(f"spearman needs equal lengths, got {len(a)} and {len(b)}")
    if len(a) < 3:
        return None
    ra, rb = average_ranks(np.asarray(a)), average_ranks(np.asarray(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return float((ra * rb).sum()) / denom if denom > 0 else None


def rank_correlations(sample: SampleTrace) -> list[float | None]:
    """Per decision, Spearman's rho of the common candidates' scores against the previous decision (None first)."""
    if sample.scores is None:
        raise ValueError("this trace has no scores: run with reroute.apply(model, config, record_scores=True)")
    out: list[float | None] = [None]
    for prev, now in zip(sample.scores, sample.scores[1:]):
        prev_of = dict(zip(prev.positions.tolist(), prev.scores.tolist()))
        common = [(prev_of[p], v) for p, v in zip(now.positions.tolist(), now.scores.tolist()) if p in prev_of]
        out.append(spearman([c[0] for c in common], [c[1] for c in common]) if common else None)
    return out


def box_positions(grids: Sequence[TokenGrid], box: Box, image: int = 0) -> list[int]:
    """Prompt positions of the patches of image ``image`` whose cell centre lies inside ``box``."""
    chosen = [g for g in grids if g.image_index == image]
    if not chosen:
        raise ValueError(f"no token grid for image {image}: the box belongs to an image the grids do not cover")
    out = []
    for grid in chosen:
        inside = grid.in_box(box).flatten()
        out += [p for p, keep in zip(grid.positions, inside) if keep]
    return out


def box_activity(sample: TracedSample) -> list[float | None]:
    """Per decision, the share of the GT box's patches active in that stage (None without a box or patches)."""
    stages = len(sample.trace.selected)
    if sample.box is None:
        return [None] * stages
    inside = box_positions(sample.grids, sample.box, sample.box_image)
    if not inside:
        return [None] * stages
    return [len(set(inside) & set(chosen)) / len(inside) for chosen in sample.trace.selected]


# ----------------------------------------------------------------------------- over a dataset


def _mean(values: Iterable[float | None]) -> tuple[float | None, int]:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return (statistics.fmean(kept) if kept else None), len(kept)


def analyze_traces(runs: Sequence[RunTraces]) -> list[DecisionStats]:
    """Per run and decision: mean re-entry rate, rank correlation and GT-box activity (module docstring)."""
    rows = []
    for run in runs:
        routed = [s for s in run.samples if s.trace.routed]
        has_scores = all(s.trace.scores is not None for s in routed)
        per_sample = [
            (
                reentry_rates(s.trace),
                rank_correlations(s.trace) if has_scores else [None] * len(s.trace.selected),
                box_activity(s),
            )
            for s in routed
        ]
        for d, layer in enumerate(run.decision_layers):
            reentry, _ = _mean(p[0][d] for p in per_sample)
            rho, n_rho = _mean(p[1][d] for p in per_sample)
            box, n_box = _mean(p[2][d] for p in per_sample)
            keep, _ = _mean(len(s.trace.selected[d]) for s in routed)
            rows.append(
                DecisionStats(
                    run=run.name,
                    action=run.action,
                    decision=d,
                    layer=layer,
                    mean_keep=keep if keep is not None else 0.0,
                    reentry=reentry,
                    spearman=rho,
                    box_active=box,
                    n_samples=len(routed),
                    n_spearman=n_rho,
                    n_box=n_box,
                    num_layers=len(routed[0].trace.visual_per_layer) if routed else 0,
                )
            )
    return rows


def box_activity_per_layer(sample: TracedSample, decision_layers: Sequence[int]) -> list[float] | None:
    """Per decoder layer, the share of the GT box's patches taking part. Before the first decision
    that is the share that entered the decoder: 1, or less after a vision stage (Nüwa's stage 1)."""
    stages = box_activity(sample)
    before = entered_box_share(sample)
    if before is None or any(v is None for v in stages):
        return None
    out = []
    for layer in range(len(sample.trace.visual_per_layer)):
        stage = sum(d <= layer for d in decision_layers) - 1
        out.append(before if stage < 0 else stages[stage])
    return out


def entered_box_share(sample: TracedSample) -> float | None:
    """The share of the GT box's patches that entered the decoder (None without a box, or when a
    vision stage dropped tokens and the trace has no scores to tell which)."""
    if sample.box is None:
        return None
    inside = box_positions(sample.grids, sample.box, sample.box_image)
    if not inside:
        return None
    trace = sample.trace
    if trace.scores:  # every token in the decoder is a candidate at the first decision
        return len(set(inside) & set(trace.scores[0].positions.tolist())) / len(inside)
    if sum(len(g.positions) for g in sample.grids) == trace.num_visual:  # no vision stage dropped any
        return 1.0
    return None


def summarize_runs(runs: Sequence[RunTraces]) -> list[RunSummary]:
    """Per run: mean avg_T and mean over samples of the layer-averaged GT-box activity."""
    out = []
    for run in runs:
        routed = [s for s in run.samples if s.trace.routed]
        per_layer = [box_activity_per_layer(s, run.decision_layers) for s in routed]
        box, n_box = _mean(statistics.fmean(v) for v in per_layer if v is not None)
        avg_t, _ = _mean(s.trace.avg_T for s in routed)
        out.append(
            RunSummary(run.name, run.action, tuple(run.decision_layers), avg_t or 0.0, box, len(routed), n_box)
        )
    return out


def format_summaries(summaries: Sequence[RunSummary]) -> str:
    """Per-run summary as a markdown table."""
    lines = [
        "| run | action | decision layers | avg_T | GT-box patches active, mean over layers | samples (box) |",
        "|---|---|---|---|---|---|",
    ]
    for r in summaries:
        lines.append(
            f"| {r.run} | {r.action} | {', '.join(map(str, r.decision_layers))} | {r.avg_t:.2f} | "
            f"{_fmt(r.box_active_layer_mean)} | {r.n_samples} ({r.n_box}) |"
        )
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_analysis(rows: Sequence[DecisionStats]) -> str:
    """The analysis as a markdown table, one line per run and decision."""
    lines = [
        "| run | action | decision (layer) | kept | re-entry rate | Spearman vs previous | GT-box patches active | samples (box) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.run} | {r.action} | {r.decision + 1} ({r.layer}) | {r.mean_keep:.1f} | {_fmt(r.reentry)} | "
            f"{_fmt(r.spearman)} | {_fmt(r.box_active)} | {r.n_samples} ({r.n_box}) |"
        )
    return "\n".join(lines)


def analysis_json(
    rows: Sequence[DecisionStats], meta: dict | None = None, summaries: Sequence[RunSummary] = ()
) -> str:
    return json.dumps(
        {"meta": meta or {}, "rows": [asdict(r) for r in rows], "runs": [asdict(r) for r in summaries]}, indent=2
    )
