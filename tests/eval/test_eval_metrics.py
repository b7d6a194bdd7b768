"""Benchmark metrics on hand-computed cases (no files, no models)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reroute.eval.metrics.gqa import exact_match, gqa_metrics, normalize_answer
from reroute.eval.metrics.intervals import bootstrap, from_draws, mean_interval, proportion, wilson
from reroute.eval.metrics.mmbench import circular_group, extract_choice, mmbench_metrics
from reroute.eval.metrics.mme import COGNITION, PERCEPTION, mme_label, mme_metrics
from reroute.eval.metrics.pope import binary_metrics, pope_metrics, yes_no_label
from reroute.eval.metrics.rec import center_inside, iou, normalize_box, parse_box, rec_metrics, xywh_to_xyxy_normalized

# ----------------------------------------------------------------------------- intervals


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        # Wilson 95 % bounds worked by hand: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
        (8, 10, 0.4901624, 0.9433178),
        (0, 10, 0.0, 0.2775328),
        (10, 10, 0.7224672, 1.0),
        (50, 100, 0.4038315, 0.5961685),
    ],
)
def test_wilson_matches_hand_computed_bounds(successes, n, low, high):
    m = wilson(successes, n)
    assert m.value == successes / n and m.n == n
    assert m.low == pytest.approx(low, abs=1e-6) and m.high == pytest.approx(high, abs=1e-6)


def test_wilson_of_nothing_is_nan_and_bad_counts_are_refused():
    m = wilson(0, 0)
    assert math.isnan(m.value) and math.isnan(m.low) and math.isnan(m.high) and m.n == 0
    with pytest.raises(ValueError, match=r"^wilson needs 0 <= successes <= n, got successes=3, n=2$"):
        wilson(3, 2)


def test_bootstrap_is_seeded_and_brackets_the_value():
    values = np.random.default_rng(1).normal(size=200)
    a, b = mean_interval(values), mean_interval(values)
    assert a == b  # same seed, same interval
    assert a.value == pytest.approx(values.mean())
    assert a.low < a.value < a.high
    # the interval is about two standard errors wide each side
    se = values.std() / math.sqrt(len(values))
    assert a.high - a.low == pytest.approx(2 * 1.96 * se, rel=0.2)
    assert mean_interval(values, seed=5) != a


def test_bootstrap_of_a_constant_has_no_width():
    m = bootstrap(lambda idx: 3.0, 7)
    assert (m.value, m.low, m.high, m.n) == (3.0, 3.0, 3.0, 7)


def test_interval_from_draws_widens_to_include_the_value():
    m = from_draws(5.0, np.arange(100, dtype=float), 10)
    assert (m.value, m.n) == (5.0, 10)
    assert m.low == pytest.approx(2.475) and m.high == pytest.approx(96.525)
    assert from_draws(0.0, [1.0, 2.0, 3.0], 3).low == 0.0


# ----------------------------------------------------------------------------- REC


@pytest.mark.parametrize(
    ("answer", "box"),
    [
        ("[0.1, 0.2, 0.3, 0.4]", (0.1, 0.2, 0.3, 0.4)),
        ("The box is [0.10,0.2 , 0.3,0.40].", (0.1, 0.2, 0.3, 0.4)),
        ("(10, 20, 30, 40)", (10.0, 20.0, 30.0, 40.0)),
        ("(1, 2, 3, 4) or rather [0.5, 0.5, 0.6, 0.6]", (0.5, 0.5, 0.6, 0.6)),  # square brackets win
        ('```json\n[\n\t{"bbox_2d": [12, 34, 56, 78], "label": "the cat"}\n]\n```', (12.0, 34.0, 56.0, 78.0)),
        ("[-0.1, .2, 0.5, 0.6]", (-0.1, 0.2, 0.5, 0.6)),
        ("[0.1, 0.2, 0.3]", None),
        ("I cannot tell.", None),
        ("", None),
    ],
)
def test_parse_box(answer, box):
    assert parse_box(answer) == box


def test_pixel_boxes_are_divided_by_the_frame():
    assert normalize_box((32, 12, 64, 48), (64, 48)) == (0.5, 0.25, 1.0, 1.0)
    assert normalize_box((0.2, 0.2, 1.0, 1.0), (64, 48)) == (0.2, 0.2, 1.0, 1.0)  # 1 is not a pixel value
    assert normalize_box((0.5, 0.5, 1.5, 0.9), (10, 10)) == (0.05, 0.05, 0.15, 0.09)  # one value > 1: pixels
    assert xywh_to_xyxy_normalized((4, 3, 20, 12), (64, 48)) == (0.0625, 0.0625, 0.375, 0.3125)


def test_iou_hand_computed():
    assert iou((0, 0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75)) == pytest.approx(0.0625 / 0.4375)
    assert iou((0.1, 0.1, 0.4, 0.4), (0.1, 0.1, 0.4, 0.4)) == pytest.approx(1.0)
    assert iou((0, 0, 0.2, 0.2), (0.5, 0.5, 0.9, 0.9)) == 0.0


def test_iou_clips_out_of_range_boxes_and_zero_area_scores_zero():
    gt = (0.5, 0.5, 1.0, 1.0)
    assert iou((0.5, 0.5, 1.5, 1.5), gt) == pytest.approx(1.0)  # the part outside the image is dropped
    assert iou((1.2, 1.2, 1.5, 1.5), gt) == 0.0  # entirely outside: nothing left
    assert iou((-0.5, -0.5, 0.0, 0.0), (0.0, 0.0, 0.5, 0.5)) == 0.0
    assert iou((0.6, 0.6, 0.6, 0.9), gt) == 0.0  # zero width
    assert iou((0.9, 0.9, 0.6, 0.6), gt) == 0.0  # inverted corners
    assert iou((0.3, 0.3, 0.3, 0.3), (0.3, 0.3, 0.3, 0.3)) == 0.0  # both empty: no division by zero


def test_center_inside_includes_the_border():
    assert center_inside((0, 0, 0.2, 0.2), (0, 0, 0.1, 0.1))
    assert not center_inside((0, 0, 0.2, 0.21), (0, 0, 0.1, 0.1))
    assert center_inside((0.5, 0.5, 1.5, 1.5), (0.7, 0.7, 0.8, 0.8))  # centre of the clipped box (0.75, 0.75)


def test_rec_metrics_hand_computed():
    targets = [(0.1, 0.1, 0.4, 0.4), (0.1, 0.1, 0.4, 0.4), (0.25, 0.25, 0.75, 0.75), (0.5, 0.5, 1.0, 1.0)]
    predictions = [(0.1, 0.1, 0.4, 0.4), None, (0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.5, 1.5)]
    m = rec_metrics(predictions, targets)
    assert m["acc@0.5"].value == 0.5 and m["acc@0.5"].n == 4
    assert m["acc@0.1"].value == 0.75  # IoU 1/7 passes 0.1, fails 0.3
    assert m["acc@0.3"].value == 0.5 and m["acc@0.9"].value == 0.5
    assert m["miou"].value == pytest.approx((1 + 0 + 0.0625 / 0.4375 + 1) / 4)
    assert m["center_acc"].value == 0.75  # the unparsed answer is wrong
    assert m["parsed"].value == 0.75
    assert set(m) == {"acc@0.1", "acc@0.3", "acc@0.5", "acc@0.7", "acc@0.9", "miou", "center_acc", "parsed"}


def test_unparsed_answer_is_wrong_for_centre_accuracy_even_at_the_origin():
    # lmms-eval scores an unparsed answer as the box [0, 0, 0, 0], whose centre (0, 0) lies in a
    # ground truth touching the corner; here it is wrong.
    assert rec_metrics([None], [(0.0, 0.0, 0.3, 0.3)])["center_acc"].value == 0.0


# ----------------------------------------------------------------------------- POPE


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("yes", "yes"), ("Yes.", "yes"), (" YES, there is a dog.", "yes"), ("No", "no"), ("no.", "no"),
        ("There is no dog.", "other"), ("", "other"), ("Yesterday", "other"),
    ],  # fmt: skip
)
def test_yes_no_label(answer, label):
    assert yes_no_label(answer) == label


def test_pope_metrics_hand_computed_pooled_and_per_category():
    predictions = ["yes", "yes", "no", "other"]
    targets = ["yes", "no", "yes", "yes"]
    categories = ["random", "random", "adversarial", "adversarial"]
    m = pope_metrics(predictions, targets, categories)
    assert m["accuracy"].value == 0.25
    assert m["precision"].value == 0.5 and m["precision"].n == 2
    assert m["recall"].value == pytest.approx(1 / 3) and m["recall"].n == 3  # "other" is a miss
    assert m["f1"].value == pytest.approx(0.4)
    assert m["yes_ratio"].value == 0.5
    assert m["random/accuracy"].value == 0.5 and m["random/recall"].value == 1.0
    assert m["random/f1"].value == pytest.approx(2 / 3)
    assert m["adversarial/accuracy"].value == 0.0 and m["adversarial/f1"].value == 0.0
    assert math.isnan(m["adversarial/precision"].value)  # no "yes" predicted in that category
    assert m["f1_category_mean"].value == pytest.approx(1 / 3)


def test_pope_yes_with_period_counts_as_yes():
    m = binary_metrics([yes_no_label("Yes."), yes_no_label("No.")], ["yes", "no"])
    assert m["accuracy"].value == 1.0 and m["f1"].value == 1.0


# ----------------------------------------------------------------------------- GQA


def test_gqa_normalisation_and_exact_match():
    assert normalize_answer("  The Cat! ") == "the cat"
    assert normalize_answer("Yes.") == "yes"
    assert exact_match("T-shirt", "tshirt")  # punctuation is deleted, not replaced by a space
    assert not exact_match("the cat", "cat")
    m = gqa_metrics(["Left.", "right", "no"], ["left", "left", "No"])
    assert m["accuracy"].value == pytest.approx(2 / 3) and m["accuracy"].n == 3


# ----------------------------------------------------------------------------- MME


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("Yes", "yes"), ("No.", "no"), ("y", "yes"), ("N", "no"), ("x", "other"), ("Yes, it is.", "yes"),
        ("Not really", "no"), ("The answer is yes", "other"),
    ],  # fmt: skip
)
def test_mme_label(answer, label):
    assert mme_label(answer) == label


def test_mme_pairs_acc_plus_and_sums_hand_computed():
    categories = ["existence"] * 4 + ["code_reasoning"] * 2
    images = ["e0", "e0", "e1", "e1", "c0", "c0"]
    correct = [True, True, True, False, False, False]
    m = mme_metrics(categories, images, correct)
    assert m["existence/acc"].value == 0.75 and m["existence/acc"].n == 4
    assert m["existence/acc_plus"].value == 0.5 and m["existence/acc_plus"].n == 2
    assert m["existence/score"].value == pytest.approx(125.0)
    assert m["code_reasoning/score"].value == 0.0
    assert m["perception"].value == pytest.approx(125.0)
    assert m["cognition"].value == 0.0


def test_mme_perfect_answers_reach_2000_and_800():
    categories, images = [], []
    for category in PERCEPTION + COGNITION:
        for image in range(3):
            categories += [category, category]
            images += [f"{category}/{image}", f"{category}/{image}"]
    m = mme_metrics(categories, images, [True] * len(categories))
    assert m["perception"].value == pytest.approx(2000.0) and m["cognition"].value == pytest.approx(800.0)
    assert m["perception"].low == m["perception"].high == pytest.approx(2000.0)


def test_mme_sum_interval_is_seeded_and_wider_than_each_category():
    rng = np.random.default_rng(3)
    categories = [c for c in ("existence", "count", "OCR") for _ in range(40)]
    images = [f"{c}/{i // 2}" for c, i in zip(categories, list(range(40)) * 3)]
    correct = (rng.random(len(categories)) < 0.7).tolist()
    m = mme_metrics(categories, images, correct)
    assert m == mme_metrics(categories, images, correct)
    assert m["perception"].value == pytest.approx(sum(m[f"{c}/score"].value for c in ("existence", "count", "OCR")))
    assert m["perception"].n == 60
    width = m["perception"].high - m["perception"].low
    assert all(width > m[f"{c}/score"].high - m[f"{c}/score"].low for c in ("existence", "count", "OCR"))
    assert m["perception"].low < m["perception"].value < m["perception"].high


# ----------------------------------------------------------------------------- MMBench

OPTIONS = {"A": "red 0", "B": "green 0", "C": "blue 0"}


@pytest.mark.parametrize(
    ("answer", "choice"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        (" C\n", "C"),
        ("B) green", "B"),
        ("B. green 0", "B"),
        ("(C) blue", "C"),
        ("Answer: C", "C"),
        ("The answer is A.", "A"),
        ("green 0", "B"),
        ("I think it is green 0.", "B"),
        ("red 0 or green 0", None),  # two options named
        ("D", None),  # not an option of this question
        ("A cat", None),  # a leading article, not a letter
        ("The answer is Blue", None),
        ("", None),
    ],
)
def test_extract_choice(answer, choice):
    assert extract_choice(answer, OPTIONS) == choice


def test_extract_choice_ignores_nan_options():
    assert extract_choice("D", {"A": "x", "B": "y", "C": "z", "D": "nan"}) is None


def test_mmbench_circular_groups():
    assert circular_group(2_000_005) == 5 and circular_group(5) == 5
    indices = [0, 1_000_000, 2_000_000, 1, 1_000_001, 2]
    correct = [True, True, False, True, True, False]
    categories = ["color", "color", "color", "shape", "shape", "shape"]
    m = mmbench_metrics(indices, correct, categories)
    assert m["circular_accuracy"].value == pytest.approx(1 / 3) and m["circular_accuracy"].n == 3
    assert m["accuracy"].value == pytest.approx(4 / 6)
    assert m["color/circular_accuracy"].value == 0.0 and m["shape/circular_accuracy"].n == 2
    assert m["shape/circular_accuracy"].value == 0.5


def test_proportion_counts_truthy_flags():
    m = proportion([True, False, True, True])
    assert (m.value, m.n) == (0.75, 4)
