"""GQA (testdev-balanced): exact match after lower-casing and removing punctuation.

The headline is lmms-eval's (`lmms_exact_match`): the answer is stripped, then lower-cased and
every ASCII punctuation character deleted (not replaced by a space); the target is lower-cased
with punctuation deleted (the files' answers have no surrounding spaces). So "yes ." does not
match "yes". The careful reading (`exact_match`, reroute's) strips both after deleting
punctuation.
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


def lmms_normalize(text: str) -> str:
    """``text`` lower-cased with ASCII punctuation deleted (lmms-eval's ``ignore_case``, ``ignore_punctuation``)."""
    return (text or "").lower().translate(_NO_PUNCTUATION)


def lmms_exact_match(prediction: str, target: str) -> bool:
    """lmms-eval's GQA score: the stripped prediction equals the target after `lmms_normalize` of both."""
    return lmms_normalize((prediction or "").strip()) == lmms_normalize(target)


def exact_match(prediction: str, target: str) -> bool:
    """Whether the two answers are equal after `normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(target)


def gqa_metrics(predictions: Sequence[str], targets: Sequence[str], lmms: bool = False) -> dict[str, Metric]:
    """``accuracy``: the exact-match rate (`lmms_exact_match` when ``lmms``, else `exact_match`)."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    match = lmms_exact_match if lmms else exact_match
    return {"accuracy": proportion([match(p, t) for p, t in zip(predictions, targets)])}
