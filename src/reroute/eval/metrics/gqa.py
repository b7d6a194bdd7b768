"""GQA (testdev-balanced): exact match after lower-casing and removing punctuation.

As lmms-eval's ``exact_match`` with ``ignore_case`` and ``ignore_punctuation``: every ASCII
punctuation character is deleted (not replaced by a space), then surrounding whitespace is
stripped, and the strings must be equal.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from reroute.eval.metrics.intervals import proportion
from reroute.eval.task import Metric

_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """``text`` lower-cased, ASCII punctuation deleted, surrounding whitespace stripped."""
    return (text or "").lower().translate(_NO_PUNCTUATION).strip()


def exact_match(prediction: str, target: str) -> bool:
    """Whether the two answers are equal after `normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(target)


def gqa_metrics(predictions: Sequence[str], targets: Sequence[str]) -> dict[str, Metric]:
    """``accuracy``: the exact-match rate."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    return {"accuracy": proportion([exact_match(p, t) for p, t in zip(predictions, targets)])}
