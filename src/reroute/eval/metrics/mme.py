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
    # One unit per (category, image): the fraction of its questions answered right, and whether all were.
    units: dict[tuple[str, str], list[bool]] = {}
    for category, image, ok in zip(categories, image_ids, correct):
        units.setdefault((category, image), []).append(bool(ok))
    unit_category = np.array([c for c, _ in units], dtype=object)
    unit_acc = np.array([np.mean(v) for v in units.values()], dtype=float)
    unit_plus = np.array([all(v) for v in units.values()], dtype=float)

    def summed_score(units_idx: np.ndarray, wanted: Sequence[str]) -> float:
        """Sum over ``wanted`` categories of (mean acc + mean acc+) * 100 over the given units."""
        cats = unit_category[units_idx]
        return float(
            sum((unit_acc[units_idx][cats == c].mean() + unit_plus[units_idx][cats == c].mean()) * 100 for c in wanted)
        )

    metrics: dict[str, Metric] = {}
    present = sorted(set(unit_category.tolist()))
    for category in present:
        mine = np.flatnonzero(unit_category == category)
        metrics[f"{category}/acc"] = proportion([ok for c, ok in zip(categories, correct) if c == category])
        metrics[f"{category}/acc_plus"] = proportion(unit_plus[mine].astype(bool).tolist())
        metrics[f"{category}/score"] = stratified_bootstrap(
            lambda idx, m=mine, c=category: summed_score(m[idx], [c]), [category] * len(mine)
        )
    for name, group in (("perception", PERCEPTION), ("cognition", COGNITION)):
        wanted = [c for c in present if c in group]
        if wanted:
            mine = np.flatnonzero(np.isin(unit_category, wanted))
            metrics[name] = stratified_bootstrap(
                lambda idx, m=mine, w=wanted: summed_score(m[idx], w), unit_category[mine].tolist()
            )
    return metrics
