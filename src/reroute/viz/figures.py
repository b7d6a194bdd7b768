"""Pictures of routing decisions, and the Python side of `reroute show` and `reroute analyze`.

* `plot_decisions(images, runs, grids)`: per image and run (`RunView.from_trace(handle.trace)`),
  the candidates' score heat map and the active / deferred / removed patches at every decision.
  Needs a trace with scores: ``reroute.apply(model, config, record_scores=True)``. Token grids
  come from `reroute.backbones.grids` (LLaVA's square grid, Qwen's merged grids).
* `plot_analysis`: the per-decision statistics of `reroute.viz.statistics` (re-entry rate, rank
  correlation of scores, GT-box activity), as `reroute analyze` draws them.

matplotlib is an optional dependency (``pip install reroute[viz]``); it is imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reroute.backbones.grids import Box, TokenGrid
from reroute.runtime.trace import SampleTrace, Trace
from reroute.viz.statistics import DecisionStats


ACTIVE, REENTERED, DEFERRED, REMOVED = 0, 1, 2, 3
STATE_NAMES = {ACTIVE: "active", REENTERED: "active again (deferred before)", DEFERRED: "deferred", REMOVED: "removed"}
# active cells stay clear (and are outlined); deferred ones are tinted blue, removed ones dark red,
# so both read on the demo's dark scenes as well as on photos
_STATE_COLORS = [(0, 0, 0, 0), (0, 0, 0, 0), (0.15, 0.4, 1.0, 0.6), (0.45, 0.0, 0.05, 0.78)]
_ACTIVE_EDGE, _REENTERED_EDGE = "cyan", "gold"


@dataclass(frozen=True)
class RunView:
    """One run of one sample, as the figure shows it.

    name: the row label (e.g. ``"remove (pdrop)"``). action: ``"remove"`` or ``"reroute"``.
    decision_layers: the run's decision layers. sample: that sample's `SampleTrace` (scores
    recorded for the heat maps). answer: the generated text, if any. answer_box: the box the
    answer names, in original-image pixels of image ``answer_image``, if any.
    """

    name: str
    action: str
    decision_layers: tuple[int, ...]
    sample: SampleTrace
    answer: str | None = None
    answer_box: Box | None = None
    answer_image: int = 0

    @classmethod
    def from_trace(cls, trace: Trace, name: str | None = None, sample: int = 0, **kwargs) -> RunView:
        """From ``handle.trace`` (sample ``sample`` of the last routed prefill)."""
        return cls(
            name=name or trace.action,
            action=trace.action,
            decision_layers=tuple(trace.decision_layers),
            sample=trace[sample],
            **kwargs,
        )


def decision_states(sample: SampleTrace, grid: TokenGrid, action: str) -> list[np.ndarray]:
    """Per decision, ``(rows, cols)`` int8 cell states: ACTIVE, REENTERED (active now, not
    selected at the previous decision), DEFERRED (reroute: not selected) or REMOVED (remove: not
    selected now or at an earlier decision; any action: dropped before the decoder by a vision
    stage, known from the first decision's candidates when scores were recorded)."""
    if action not in ("remove", "reroute"):
        raise ValueError(f"action must be 'remove' or 'reroute', got {action!r}")
    # every token that entered the decoder is a candidate at the first decision, whatever the action
    entered = grid.mask(sample.scores[0].positions.tolist()) if sample.scores else None
    out, previous = [], None
    for chosen in sample.selected:
        active = grid.mask(chosen)
        states = np.full(grid.shape, DEFERRED if action == "reroute" else REMOVED, dtype=np.int8)
        if entered is not None:
            states[~entered] = REMOVED
        states[active] = ACTIVE
        if previous is not None:
            states[active & ~previous] = REENTERED
        out.append(states)
        previous = active
    return out


def score_grids(sample: SampleTrace, grid: TokenGrid) -> list[np.ndarray]:
    """Per decision, ``(rows, cols)`` float: each candidate's score at its cell, NaN on non-candidates."""
    if sample.scores is None:
        raise ValueError("this trace has no scores: run with reroute.apply(model, config, record_scores=True)")
    return [grid.values(d.positions.tolist(), d.scores.tolist()) for d in sample.scores]


def _extent(box: Box) -> tuple[float, float, float, float]:
    """imshow extent (left, right, bottom, top) of a box in image coordinates (y down)."""
    x0, y0, x1, y1 = box
    return (x0, x1, y1, y0)


def _limits(ax, image_size, region: Box) -> None:
    width, height = image_size
    ax.set_xlim(min(0, region[0]), max(width, region[2]))
    ax.set_ylim(max(height, region[3]), min(0, region[1]))
    ax.set_xticks([])
    ax.set_yticks([])


def _rect(ax, box: Box | None, color: str, label: str | None = None, lw: float = 2.0, style: str = "-"):
    from matplotlib.patches import Rectangle

    if box is None:
        return
    x0, y0, x1, y1 = box
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=lw, ec=color, ls=style, label=label))


def _wrap(text: str, width: int = 34) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) if text else ""


def plot_decisions(
    images: Sequence,
    runs: Sequence[RunView],
    grids: Sequence[TokenGrid],
    title: str | None = None,
    target_box: Box | None = None,
    target_image: int = 0,
    path: str | None = None,
):
    """One figure: per image (one row group each) and run, the image with the answer (and its box),
    then per decision the candidates' score heat map (log scale, over the image) above the cells'
    states (active, active again, deferred, removed). Returns the matplotlib Figure; saves it to
    ``path`` when given (format from the suffix: .png or .svg).

    images: the original images (PIL or arrays), in prompt order. grids: their token grids
    (`reroute.backbones.grids`), one per image (or per video frame). target_box: the ground truth, in
    original pixels of image ``target_image``.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    if not runs:
        raise ValueError("plot_decisions needs at least one run")
    arrays = [np.asarray(image) for image in images]
    num_decisions = max(len(r.sample.selected) for r in runs)
    columns = 1 + num_decisions
    rows = 2 * len(runs) * len(grids)
    title_lines = title.count("\n") + 1 if title else 0
    fig = plt.figure(figsize=(2.3 * columns, 2.25 * rows + 0.25 * title_lines + 0.6))
    spec = fig.add_gridspec(rows, columns, hspace=0.32, wspace=0.06)
    state_map = ListedColormap(_STATE_COLORS)
    colors = ["tab:red", "tab:blue", "tab:orange", "tab:purple"]

    for g, grid in enumerate(grids):
        image = arrays[grid.image_index]
        size = (image.shape[1], image.shape[0])
        for r, run in enumerate(runs):
            top = 2 * (g * len(runs) + r)
            color = colors[r % len(colors)]
            ax = fig.add_subplot(spec[top : top + 2, 0])
            ax.imshow(image)
            if grid.image_index == target_image:
                _rect(ax, target_box, "lime", "ground truth")
            if grid.image_index == run.answer_image:
                _rect(ax, run.answer_box, color, "answer", style="--")
            _limits(ax, size, grid.region)
            label = run.name if len(grids) == 1 else f"{run.name}, image {grid.image_index + 1}"
            ax.set_title(label, fontsize=9, color=color, fontweight="bold")
            kept = ", ".join(str(len(c)) for c in run.sample.selected)
            caption = f"decision layers {list(run.decision_layers)}\nkept: {kept} of {run.sample.num_visual}"
            if run.answer is not None:
                caption += "\n" + _wrap(f"answer: {run.answer}")
            ax.set_xlabel(caption, fontsize=7.5)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6, loc="upper right", framealpha=0.7)

            heat = score_grids(run.sample, grid) if run.sample.scores is not None else None
            states = decision_states(run.sample, grid, run.action)
            for s in range(num_decisions):
                ax_heat = fig.add_subplot(spec[top, 1 + s])
                ax_state = fig.add_subplot(spec[top + 1, 1 + s])
                if s >= len(states):
                    ax_heat.axis("off")
                    ax_state.axis("off")
                    continue
                layer = run.decision_layers[s]
                ax_heat.imshow(image)
                if heat is not None:
                    values = heat[s]
                    with np.errstate(divide="ignore", invalid="ignore"):
                        logs = np.log10(np.where(values > 0, values, np.nan))
                    finite = logs[np.isfinite(logs)]
                    if finite.size:
                        masked = np.ma.masked_invalid(logs)
                        cmap = matplotlib.colormaps["inferno"].with_extremes(bad=(0.5, 0.5, 0.5, 0.85))
                        ax_heat.imshow(
                            masked, cmap=cmap, alpha=0.72, extent=_extent(grid.region), interpolation="nearest",
                            vmin=float(finite.min()), vmax=float(finite.max()), gid="scores",
                        )
                    ax_heat.set_title(f"layer {layer}: scores, log ({np.isfinite(values).sum()} cand.)", fontsize=7.5)
                else:
                    ax_heat.set_title(f"layer {layer}: no scores recorded", fontsize=7.5)
                _limits(ax_heat, size, grid.region)
                if grid.image_index == target_image:
                    _rect(ax_heat, target_box, "lime", lw=1.0, style=":")

                cells = states[s]
                ax_state.imshow(image)
                ax_state.imshow(
                    cells, cmap=state_map, vmin=-0.5, vmax=3.5, extent=_extent(grid.region), interpolation="nearest",
                    gid="states",
                )
                for row, col in zip(*np.nonzero(cells == ACTIVE)):
                    _rect(ax_state, grid.cell_box(row, col), _ACTIVE_EDGE, lw=0.6)
                for row, col in zip(*np.nonzero(cells == REENTERED)):
                    _rect(ax_state, grid.cell_box(row, col), _REENTERED_EDGE, lw=1.2)
                if grid.image_index == target_image:
                    _rect(ax_state, target_box, "lime", lw=1.0, style=":")
                active = int(np.isin(cells, (ACTIVE, REENTERED)).sum())
                again = int((cells == REENTERED).sum())
                note = f", {again} again" if s > 0 and run.action == "reroute" else ""
                ax_state.set_title(f"stage {s + 1}: {active} active{note}", fontsize=7.5)
                _limits(ax_state, size, grid.region)

    legend = [
        Patch(fc="white", ec=_ACTIVE_EDGE, lw=1.5, label="active"),
        Patch(fc="white", ec=_REENTERED_EDGE, lw=1.5, label="active again (not selected at the previous decision)"),
        Patch(fc=_STATE_COLORS[DEFERRED], label="deferred (reroute)"),
        Patch(fc=_STATE_COLORS[REMOVED], label="removed (remove, or before the decoder)"),
        Patch(fc="gray", label="not a candidate (scores row)"),
        Patch(fc="white", ec="lime", ls=":", label="ground truth"),
    ]
    fig.legend(handles=legend, loc="lower center", ncol=3, fontsize=7.5, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.99, top=1 - (0.4 + 0.22 * title_lines) / fig.get_figheight(),
                        bottom=0.75 / fig.get_figheight())
    if path is not None:
        save_figure(fig, path)
    return fig


def save_figure(fig, path: str, dpi: int = 130) -> None:
    """Save as PNG or SVG (by suffix) and close the figure."""
    import matplotlib.pyplot as plt

    suffix = str(path).rsplit(".", 1)[-1].lower()
    if suffix not in ("png", "svg"):
        raise ValueError(f"figure path must end in .png or .svg, got {path!r}")
    fig.savefig(path, dpi=dpi, format=suffix)
    plt.close(fig)


# ============================================================================= analysis plots


def plot_analysis(rows: Sequence[DecisionStats], path: str | None = None):
    """Three panels: re-entry rate and rank correlation at each decision layer, and the share of
    GT-box patches taking part in every decoder layer (1 before the first decision); a line per
    run (remove dashed, reroute solid). Returns the Figure; saves it to ``path`` when given."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.0))
    panels = (
        ("reentry", "re-entry rate: share of the selected tokens\nnot selected at the previous decision"),
        ("spearman", "Spearman rank correlation of the scores\nwith the previous decision (common candidates)"),
    )
    runs = list(dict.fromkeys(r.run for r in rows))
    for i, run in enumerate(runs):
        mine = sorted((r for r in rows if r.run == run), key=lambda r: r.decision)
        style = "--" if mine[0].action == "remove" else "-"
        label = f"{run} ({mine[0].action})"
        for ax, (field_name, _) in zip(axes, panels):
            points = [(r.layer, getattr(r, field_name)) for r in mine if getattr(r, field_name) is not None]
            if points:
                ax.plot(*zip(*points), style, marker="o", color=f"C{i}", label=label)
        if all(r.box_active is not None for r in mine) and mine[0].num_layers:
            layers = list(range(mine[0].num_layers + 1))
            values = [1.0 if layer < mine[0].layer else next(r.box_active for r in reversed(mine) if r.layer <= layer)
                      for layer in layers[:-1]]
            axes[2].step(layers, values + values[-1:], style, where="post", color=f"C{i}", label=label,
                         lw=2.2 if style == "--" else 1.6)
    for ax, (_, title) in zip(axes, panels):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("decision layer")
        ax.set_xticks(sorted({r.layer for r in rows}))
        ax.grid(alpha=0.3)
    axes[0].set_ylim(bottom=0)
    axes[2].set_title("share of the GT box's patches taking part,\nper decoder layer (grounding samples)", fontsize=9)
    axes[2].set_xlabel("decoder layer")
    axes[2].set_ylim(0, 1.03)
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=7.5, loc="upper right")
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
