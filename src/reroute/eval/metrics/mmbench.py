"""MMBench: the chosen option read from the answer without any API, and circular accuracy.

MMBench's dev set holds each question several times with its options rotated; copies share
``index % 1_000_000`` (the copy of question ``i`` has index ``i + k * 1_000_000``). Circular
evaluation counts a question right only if every copy present is answered right. The option
is read from the answer by `extract_choice`; an answer it cannot read is wrong (the paper's
GPT fallback is not used).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from reroute.eval.metrics.intervals import proportion
from reroute.eval.task import Metric

CIRCULAR_MODULUS = 1_000_000
LETTERS = "ABCDE"

_BARE = re.compile(r"^\(?([A-E])\)?[.:,)]?$")
_LEADING = re.compile(r"^(?:\(([A-E])\)|([A-E])[.):,])(?:\s|$)")
_ANSWER_IS = re.compile(r"^(?:the\s+)?(?:correct\s+)?(?:answer|option)(?:\s+is)?\s*[:：]?\s*\(?([A-E])\b\)?", re.IGNORECASE)


def circular_group(index: int) -> int:
    """The question a (possibly rotated) MMBench row belongs to."""
    return int(index) % CIRCULAR_MODULUS


def extract_choice(answer: str, options: Mapping[str, str]) -> str | None:
    """The option letter an answer picks, or None.

    In order: a bare letter (``"B"``, ``"(B)"``, ``"B."``); a letter opening the answer
    (``"B. a cat"``, ``"B) ..."``, ``"(B) ..."``); ``"Answer: B"`` / ``"The answer is B"``; the
    text of exactly one option (the whole answer, or contained in it). Letters must name one
    of ``options``.
    """
    text = (answer or "").strip()
    valid = {k for k, v in options.items() if v is not None and str(v).strip() not in ("", "nan")}
    for pattern in (_BARE, _LEADING, _ANSWER_IS):
        match = pattern.match(text)
        if match:
            letter = next(g for g in match.groups() if g)
            return letter if letter in valid else None
    lowered = " ".join(text.lower().rstrip(".").split())
    exact = [k for k in sorted(valid) if " ".join(str(options[k]).lower().split()) == lowered]
    if len(exact) == 1:
        return exact[0]
    contained = [k for k in sorted(valid) if " ".join(str(options[k]).lower().split()) in lowered]
    return contained[0] if len(contained) == 1 else None


def mmbench_metrics(indices: Sequence[int], correct: Sequence[bool], categories: Sequence[str]) -> dict[str, Metric]:
    """``circular_accuracy`` over question groups, per category ``<c>/circular_accuracy``, and ``accuracy`` per row.

    ``categories`` gives each row's category; a group's category is that of its lowest index
    (the unrotated question when present).
    """
    if not len(indices) == len(correct) == len(categories):
        raise ValueError("indices, correct and categories must have the same length")
    groups: dict[int, list[tuple[int, bool, str]]] = {}
    for index, ok, category in zip(indices, correct, categories):
        groups.setdefault(circular_group(index), []).append((int(index), bool(ok), category))
    hits = {g: all(ok for _, ok, _ in rows) for g, rows in groups.items()}
    group_category = {g: min(rows)[2] for g, rows in groups.items()}
    metrics = {
        "circular_accuracy": proportion(list(hits.values())),
        "accuracy": proportion(list(correct)),
    }
    for category in sorted(set(group_category.values())):
        metrics[f"{category}/circular_accuracy"] = proportion([hits[g] for g in hits if group_category[g] == category])
    return metrics
