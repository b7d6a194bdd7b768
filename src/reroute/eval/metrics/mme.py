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

from reroute.eval.metrics.intervals import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, from_draws, proportion
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


def mme_metrics(
    categories: Sequence[str],
    image_ids: Sequence[str],
    correct: Sequence[bool],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Metric]:
    """Per category ``<c>/acc``, ``<c>/acc_plus`` and ``<c>/score``; ``perception`` and ``cognition`` sums.

    One entry per question: its category, the image it asks about (the pair key) and whether
    it was answered right. Sums cover the categories present. Score intervals come from a
    bootstrap over images stratified by category: each resample redraws every category's
    images from that category, so a sum's resample is the sum of its categories' resamples.
    """
    if not len(categories) == len(image_ids) == len(correct):
        raise ValueError("categories, image_ids and correct must have the same length")
    # One unit per (category, image): the fraction of its questions answered right, and whether all were.
    units: dict[tuple[str, str], list[bool]] = {}
    for category, image, ok in zip(categories, image_ids, correct):
        units.setdefault((category, image), []).append(bool(ok))
    present = sorted({c for c, _ in units})
    rng = np.random.default_rng(seed)
    metrics: dict[str, Metric] = {}  # filled below with the sums first, then per category
    per_category: dict[str, Metric] = {}
    scores: dict[str, tuple[float, np.ndarray, int]] = {}  # category -> (score, bootstrap draws, images)
    for category in present:
        answers = [v for (c, _), v in units.items() if c == category]
        acc = np.array([np.mean(v) for v in answers])
        plus = np.array([all(v) for v in answers], dtype=float)
        resampled = rng.integers(0, len(answers), size=(resamples, len(answers)))
        draws = (acc[resampled].mean(axis=1) + plus[resampled].mean(axis=1)) * 100
        scores[category] = ((acc.mean() + plus.mean()) * 100, draws, len(answers))
        per_category[f"{category}/acc"] = proportion([ok for c, ok in zip(categories, correct) if c == category])
        per_category[f"{category}/acc_plus"] = proportion(plus.astype(bool).tolist())
        per_category[f"{category}/score"] = from_draws(float(scores[category][0]), draws, len(answers))
    for name, group in (("perception", PERCEPTION), ("cognition", COGNITION)):
        wanted = [c for c in present if c in group]
        if wanted:
            metrics[name] = from_draws(
                float(sum(scores[c][0] for c in wanted)),
                np.sum([scores[c][1] for c in wanted], axis=0),
                sum(scores[c][2] for c in wanted),
            )
    return metrics | per_category
