"""Evaluation on local benchmark files: tasks (datasets, prompts, metrics) and the runner.

The contract between benchmarks and the runner lives in `reroute.eval.task`; the runner's
names (`evaluate`, `EvalRun`, ...) are imported on first use, so that task and metric modules
import the contract without loading the runner, its families and tqdm.
"""

from __future__ import annotations

import importlib
from typing import Any

from reroute.eval.task import EvalSample, Metric, Task, model_families

# public name -> module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "evaluate": "reroute.eval.runner",
    "EvalRun": "reroute.eval.runner",
    "evaluate_task": "reroute.eval.runner",
    "detect_family": "reroute.eval.families",
    "get_family": "reroute.eval.families",
}

__all__ = ["EvalSample", "Metric", "Task", "model_families", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reroute.eval' has no attribute {name!r}")
