"""Seeing decisions: where tokens lie on the image, what each decision chose, and statistics over runs.

- `collect`: run a routed model on prompts and keep, per sample, its trace and token grids;
- `statistics`: re-entry, score rank correlation and box activity per decision (`reroute analyze`);
- `figures`: the pictures (`reroute show`); matplotlib is imported only when a figure is drawn
  (``pip install 'reroute[viz]'``).

The token grids themselves are declared by each family's adapter (`reroute.backbones.grids`).
"""

from reroute.viz.figures import (
    ACTIVE,
    DEFERRED,
    REENTERED,
    REMOVED,
    STATE_NAMES,
    RunView,
    decision_states,
    plot_analysis,
    plot_decisions,
    save_figure,
    score_grids,
)
from reroute.viz.statistics import (
    DecisionStats,
    RunSummary,
    RunTraces,
    TracedSample,
    analysis_json,
    analyze_traces,
    format_analysis,
    format_summaries,
    summarize_runs,
)

__all__ = [
    "ACTIVE",
    "DEFERRED",
    "REENTERED",
    "REMOVED",
    "STATE_NAMES",
    "DecisionStats",
    "RunSummary",
    "RunTraces",
    "RunView",
    "TracedSample",
    "analysis_json",
    "analyze_traces",
    "decision_states",
    "format_analysis",
    "format_summaries",
    "plot_analysis",
    "plot_decisions",
    "save_figure",
    "score_grids",
    "summarize_runs",
]
