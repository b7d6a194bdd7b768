"""MME: yes/no answers scored per category by acc and acc+ over each image's question pair.

Each MME image carries two questions (one "yes", one "no"). Per category, ``acc`` is the
fraction of questions answered right and ``acc_plus`` the fraction of images whose questions
are all right; the category's score is ``(acc + acc_plus) * 100`` (0..200). Perception adds
the scores of its 10 categories (max 2000), cognition those of its 4 (max 800), as MME and
lmms-eval do. Answers are read with the rule lmms-eval took from Otter (`mme_label`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reroute.eval.metrics.intervals import proportion, stratified_bootstrap
from reroute.eval.task import Metric

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_label(answer: str) -> str:
    """``"yes"``, ``"no"`` or ``"other"``, read as lmms-eval reads MME answers.

    Lower-case, strip, delete periods; an exact "yes"/"no" is taken; a single letter "y"/"n"
    means yes/no; otherwise the first four characters decide ("yes" in them, else "no" in them).
    """
    text = (answer or "").lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_metrics(categories: Sequence[str], image_ids: Sequence[str], correct: Sequence[bool]) -> dict[str, Metric]:
    """Per category ``<c>/acc``, ``<c>/acc_plus`` and ``<c>/score``; ``perception`` and ``cognition`` sums.

    One entry per question: its category, the image it asks about (the pair key) and whether
    it was answered right. Sums cover the categories present; their intervals come from a
    bootstrap over images, stratified by category.
    """
    if not len(categories) == len(image_ids) == len(correct):
        raise ValueError("categories, image_ids and correct must have the same length")
    # one unit per (category, image): the fraction of its questions answered right and whether all were
    units: dict[tuple[str, str], list[bool]] = {}
    for category, image, ok in zip(categories, image_ids, correct):
        units.setdefault((category, image), []).append(bool(ok))
    keys = list(units)
    unit_category = np.array([c for c, _ in keys], dtype=object)
    unit_acc = np.array([np.mean(units[k]) for k in keys], dtype=float)
    unit_plus = np.array([all(units[k]) for k in keys], dtype=float)

    metrics: dict[str, Metric] = {}
    present = list(dict.fromkeys(unit_category.tolist()))
    for category in sorted(present):
        rows = [i for i, c in enumerate(categories) if c == category]
        sel = np.flatnonzero(unit_category == category)
        metrics[f"{category}/acc"] = proportion([bool(correct[i]) for i in rows])
        metrics[f"{category}/acc_plus"] = proportion(unit_plus[sel].astype(bool).tolist())
        metrics[f"{category}/score"] = _category_score(unit_acc[sel], unit_plus[sel])

    def total(group: Sequence[str]) -> Metric | None:
        wanted = [c for c in present if c in group]
        if not wanted:
            return None
        mask = np.isin(unit_category, wanted)
        idx_all = np.flatnonzero(mask)
        cats = unit_category[idx_all]

        def summed(idx: np.ndarray) -> float:
            picked = idx_all[idx]
            return float(sum((unit_acc[picked][cats[idx] == c].mean() + unit_plus[picked][cats[idx] == c].mean()) * 100 for c in wanted))

        return stratified_bootstrap(summed, cats.tolist())

    for name, group in (("perception", PERCEPTION), ("cognition", COGNITION)):
        result = total(group)
        if result is not None:
            metrics[name] = result
    return metrics


def _category_score(acc: np.ndarray, plus: np.ndarray) -> Metric:
    """(mean acc + mean acc+) * 100 over one category's images, bootstrapped over those images."""
    return stratified_bootstrap(lambda idx: float((acc[idx].mean() + plus[idx].mean()) * 100), [0] * len(acc))
