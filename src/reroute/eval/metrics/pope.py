"""POPE (object hallucination): yes/no answers, accuracy, precision, recall and F1 with "yes" positive.

An answer's label is its first word after lower-casing and stripping punctuation: "Yes." and
"yes, there is" are "yes", "No" is "no", anything else is "other". "other" is never a
positive prediction (it counts as a miss when the truth is "yes" and is never correct).
Metrics are pooled over all questions and computed per category (random / popular /
adversarial); ``f1_category_mean`` is the mean of the per-category F1s (the figure LLaVA-1.5
reports).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from reroute.eval.metrics.intervals import bootstrap, empty_metric, proportion, wilson
from reroute.eval.task import Metric

LABELS = ("yes", "no")


def yes_no_label(answer: str) -> str:
    """``"yes"``, ``"no"`` or ``"other"``: the first word of ``answer``, lower-cased, punctuation dropped."""
    words = re.sub(r"[^\w\s]", " ", (answer or "").lower()).split()
    first = words[0] if words else ""
    return first if first in LABELS else "other"


def _f1(tp: float, fp: float, fn: float) -> float:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def binary_metrics(predictions: Sequence[str], targets: Sequence[str]) -> dict[str, Metric]:
    """accuracy, precision, recall, f1 and yes_ratio (fraction of "yes" predictions) of yes/no labels."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    pred_yes = np.array([p == "yes" for p in predictions], dtype=bool)
    true_yes = np.array([t == "yes" for t in targets], dtype=bool)
    correct = np.array([p == t for p, t in zip(predictions, targets)], dtype=bool)
    tp = int((pred_yes & true_yes).sum())
    tp_flags, fp_flags, fn_flags = pred_yes & true_yes, pred_yes & ~true_yes, ~pred_yes & true_yes
    return {
        "accuracy": proportion(correct.tolist()),
        "precision": wilson(tp, int(pred_yes.sum())),
        "recall": wilson(tp, int(true_yes.sum())),
        "f1": bootstrap(lambda idx: _f1(tp_flags[idx].sum(), fp_flags[idx].sum(), fn_flags[idx].sum()), len(correct)),
        "yes_ratio": proportion(pred_yes.tolist()),
    }


def pope_metrics(predictions: Sequence[str], targets: Sequence[str], categories: Sequence[str]) -> dict[str, Metric]:
    """Pooled `binary_metrics`, the same per category as ``"<category>/<metric>"``, and ``f1_category_mean``."""
    if not len(predictions) == len(targets) == len(categories):
        raise ValueError("predictions, targets and categories must have the same length")
    metrics = binary_metrics(predictions, targets)
    names = sorted(set(categories))
    for category in names:
        rows = [i for i, c in enumerate(categories) if c == category]
        for key, value in binary_metrics([predictions[i] for i in rows], [targets[i] for i in rows]).items():
            metrics[f"{category}/{key}"] = value
    if names:
        cats = np.array(categories)
        pred_yes = np.array([p == "yes" for p in predictions])
        true_yes = np.array([t == "yes" for t in targets])

        def mean_f1(idx: np.ndarray) -> float:
            f1s = []
            for category in names:
                sel = idx[cats[idx] == category]
                py, ty = pred_yes[sel], true_yes[sel]
                f1s.append(_f1((py & ty).sum(), (py & ~ty).sum(), (~py & ty).sum()))
            return float(np.mean(f1s))

        metrics["f1_category_mean"] = bootstrap(mean_f1, len(predictions))
    else:
        metrics["f1_category_mean"] = empty_metric()
    return metrics
