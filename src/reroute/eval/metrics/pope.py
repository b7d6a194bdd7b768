"""POPE (object hallucination): yes/no answers, accuracy, precision, recall and F1 with "yes" positive.

Two readings of an answer (docs/semantics.md §9). The headline is lmms-eval's
(`whole_answer_label`): the whole answer, lower-cased and stripped, must be "yes" or "no"
("Yes." is "other"); its recall counts as misses only "no" answers to "yes" questions
(``recall_misses="no"``), so an "other" answer is outside precision and recall and is never
correct. The careful reading (`yes_no_label`, reroute's) takes the first word after lower-casing
and stripping punctuation: "Yes." and "yes, there is" are "yes"; "other" counts as a miss when the
truth is "yes".
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


def whole_answer_label(answer: str) -> str:
    """``"yes"``, ``"no"`` or ``"other"``: the whole answer lower-cased and stripped (lmms-eval's POPE reading)."""
    text = (answer or "").lower().strip()
    return text if text in LABELS else "other"


def yes_no_label(answer: str) -> str:
    """``"yes"``, ``"no"`` or ``"other"``: the first word of ``answer``, lower-cased, punctuation dropped."""
    words = re.sub(r"[^\w\s]", " ", (answer or "").lower()).split()
    first = words[0] if words else ""
    return first if first in LABELS else "other"


def _f1(tp: float, fp: float, fn: float) -> float:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


#: which answers to a "yes" question count as misses: every non-"yes" one (reroute's), or only "no" (lmms-eval's)
RECALL_MISSES = ("not_yes", "no")


def _misses(predictions: Sequence[str], recall_misses: str) -> np.ndarray:
    if recall_misses not in RECALL_MISSES:
        raise ValueError(f"recall_misses must be one of {', '.join(RECALL_MISSES)}, got {recall_misses!r}")
    if recall_misses == "no":
        return np.array([p == "no" for p in predictions], dtype=bool)
    return np.array([p != "yes" for p in predictions], dtype=bool)


def binary_metrics(predictions: Sequence[str], targets: Sequence[str], recall_misses: str = "not_yes") -> dict[str, Metric]:
    """accuracy, precision, recall, f1 and yes_ratio (fraction of "yes" predictions) of yes/no labels.

    ``recall_misses``: "not_yes" counts every non-"yes" answer to a "yes" question as a miss;
    "no" only a "no" answer (lmms-eval's recall).
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    pred_yes = np.array([p == "yes" for p in predictions], dtype=bool)
    true_yes = np.array([t == "yes" for t in targets], dtype=bool)
    correct = np.array([p == t for p, t in zip(predictions, targets)], dtype=bool)
    tp = int((pred_yes & true_yes).sum())
    tp_flags, fp_flags = pred_yes & true_yes, pred_yes & ~true_yes
    fn_flags = _misses(predictions, recall_misses) & true_yes
    return {
        "accuracy": proportion(correct.tolist()),
        "precision": wilson(tp, int(pred_yes.sum())),
        "recall": wilson(tp, tp + int(fn_flags.sum())),
        "f1": bootstrap(lambda idx: _f1(tp_flags[idx].sum(), fp_flags[idx].sum(), fn_flags[idx].sum()), len(correct)),
        "yes_ratio": proportion(pred_yes.tolist()),
    }


def pope_metrics(
    predictions: Sequence[str], targets: Sequence[str], categories: Sequence[str], recall_misses: str = "not_yes"
) -> dict[str, Metric]:
    """Pooled `binary_metrics`, the same per category as ``"<category>/<metric>"``, and ``f1_category_mean``."""
    if not len(predictions) == len(targets) == len(categories):
        raise ValueError("predictions, targets and categories must have the same length")
    metrics = binary_metrics(predictions, targets, recall_misses)
    names = sorted(set(categories))
    for category in names:
        rows = [i for i, c in enumerate(categories) if c == category]
        for key, value in binary_metrics([predictions[i] for i in rows], [targets[i] for i in rows], recall_misses).items():
            metrics[f"{category}/{key}"] = value
    if names:
        cats = np.array(categories)
        pred_yes = np.array([p == "yes" for p in predictions])
        true_yes = np.array([t == "yes" for t in targets])
        missed = _misses(predictions, recall_misses)

        def mean_f1(idx: np.ndarray) -> float:
            f1s = []
            for category in names:
                sel = idx[cats[idx] == category]
                py, ty, miss = pred_yes[sel], true_yes[sel], missed[sel]
                f1s.append(_f1((py & ty).sum(), (py & ~ty).sum(), (miss & ty).sum()))
            return float(np.mean(f1s))

        metrics["f1_category_mean"] = bootstrap(mean_f1, len(predictions))
    else:
        metrics["f1_category_mean"] = empty_metric()
    return metrics
