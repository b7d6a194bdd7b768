"""The headline reads answers as the paper's harness does (docs/semantics.md §9): hand-computed cases per
family (LLaVA 0..1 boxes kept as they are, Qwen2.5-VL pixels over the original image, Qwen3-VL 0..1000),
lmms-eval's POPE and GQA readings, and the protocol stated in run.json and summary.md.

Equality with lmms-eval's own functions is checked in tests_lmms (the lmms-eval environment)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from reroute.backbones import evaluation_protocols
from reroute.backbones.evaluation import EvalProtocol, llava_conversation
from reroute.eval.metrics.gqa import exact_match, lmms_exact_match
from reroute.eval.metrics.pope import whole_answer_label, yes_no_label
from reroute.eval.metrics.rec import (
    harness_center,
    harness_iou,
    harness_normalize,
    harness_parse,
    harness_rec_metrics,
)
from reroute.eval.runner import EvalRun
from reroute.eval.summary import protocol_lines
from reroute.eval.tasks import get_task
from tests.helpers.eval_fixtures import write_refcoco_rows

QWEN_PROMPT = "Locate the red cup in this image and output the bbox coordinates in JSON format."


# ----------------------------------------------------------------------------- protocols


def test_each_family_declares_the_papers_prompt_format_and_parser():
    protocols = evaluation_protocols()
    builtin = ("internvl", "llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")  # and the demo's, once imported
    assert {name: (protocols[name].box_format, protocols[name].box_parser) for name in builtin} == {
        "internvl": ("per_mille", "internvl"),
        "llava": ("normalized", "bracketed"),
        "llava_next": ("normalized", "bracketed"),
        "qwen2_vl": ("per_mille", "bracketed"),
        "qwen2_5_vl": ("pixels", "bracketed"),
        "qwen3_vl": ("per_mille", "bracketed"),
    }
    assert protocols["llava_next"].grounding_prompt == protocols["llava"].grounding_prompt
    assert protocols["qwen2_vl"].grounding_question("the red cup") == QWEN_PROMPT
    assert protocols["internvl"].grounding_question("the red cup") == (
        "Please provide the bounding box coordinate of the region this sentence describes: <ref>the red cup</ref>"
    )
    # Qwen2-VL runs at Qwen2.5-VL's (the paper's) pixel bounds; the other new families have none
    assert protocols["qwen2_vl"].processor_kwargs == protocols["qwen2_5_vl"].processor_kwargs
    assert protocols["internvl"].processor_kwargs == {} and protocols["llava_next"].processor_kwargs == {}
    assert protocols["llava"].grounding_question("the red cup") == (
        "Bounding box coordinates are specified in the format (top-left x, top-left y, bottom-right x, "
        "bottom-right y). All values are floating point numbers bounded between 0 and 1. Please provide "
        "the bounding box coordinate of the region this sentence describes: the red cup"
    )
    assert protocols["qwen2_5_vl"].grounding_question("the red cup") == QWEN_PROMPT
    assert protocols["qwen3_vl"].grounding_question("the red cup") == QWEN_PROMPT


def test_a_protocol_refuses_an_unknown_box_format_or_parser():
    with pytest.raises(ValueError, match=r"^box_format must be one of normalized, pixels, per_mille, got 'pixel'$"):
        EvalProtocol("x", llava_conversation, "{expression}", box_format="pixel")
    with pytest.raises(ValueError, match=r"^box_parser must be one of bracketed, square, internvl, got 'json'$"):
        EvalProtocol("x", llava_conversation, "{expression}", box_parser="json")


def test_run_json_and_summary_state_the_protocol():
    identity = EvalRun("r", None, "m", "qwen3_vl").identity()
    assert identity["protocol"] == {
        "family": "qwen3_vl",
        "harness": "the paper's harness: lmms-eval 0.7.1 with its RefCOCO per-family patch",
        "grounding_prompt": "Locate {expression} in this image and output the bbox coordinates in JSON format.",
        "short_answer_post_prompt": None,
        "box_format": "per_mille",
        "box_parser": "bracketed",
    }
    json.dumps(identity)  # run.json holds it as plain JSON
    assert protocol_lines(identity["protocol"]) == [
        (
            "- headline metrics: the paper's harness: lmms-eval 0.7.1 with its RefCOCO per-family patch; `careful/` "
            "metrics: reroute's own reading of the answers (docs/evaluation.md)"
        ),
        (
            '- REC prompt: "Locate {expression} in this image and output the bbox coordinates in JSON format."; '
            "boxes: per_mille, parser: bracketed"
        ),
        "- short-answer post-prompt: the task's (lmms-eval's)",
    ]


# ----------------------------------------------------------------------------- REC parsing and formats


@pytest.mark.parametrize(
    ("answer", "bracketed", "square"),
    [
        ("[0.1, 0.2, 0.3, 0.4]", (0.1, 0.2, 0.3, 0.4), (0.1, 0.2, 0.3, 0.4)),
        ("[0.1,0.2,0.3,0.4]", (0.1, 0.2, 0.3, 0.4), (0.1, 0.2, 0.3, 0.4)),
        ("(0.1, 0.2, 0.3, 0.4)", (0.1, 0.2, 0.3, 0.4), None),  # the paper's patch reads round brackets too
        ("(1, 2, 3, 4) then [5, 6, 7, 8]", (5.0, 6.0, 7.0, 8.0), (5.0, 6.0, 7.0, 8.0)),  # square first
        ("[0.1 , 0.2, 0.3, 0.4]", None, None),  # lmms-eval allows spaces after a comma only
        ("[.5, 0.2, 0.3, 0.4]", None, None),  # and no number without its leading digit
        ('```json\n[\n\t{"bbox_2d": [12, 34, 56, 78], "label": "the cat"}\n]\n```', (12.0, 34.0, 56.0, 78.0),
         (12.0, 34.0, 56.0, 78.0)),
        ("no box", None, None),
    ],
)
def test_harness_parsers(answer, bracketed, square):
    assert harness_parse(answer, "bracketed") == bracketed
    assert harness_parse(answer, "square") == square


@pytest.mark.parametrize(
    ("answer", "box"),
    [
        ("<ref>the red cup</ref><box>[[100, 200, 900, 900]]</box>", (100.0, 200.0, 900.0, 900.0)),
        ("[[ 100 ,200,900, 900 ]]", (100.0, 200.0, 900.0, 900.0)),  # float() takes the spaces around a piece
        ("[12.5, .5, 3, 4]", (12.5, 0.5, 3.0, 4.0)),
        ("[[1, 2], [3, 4]]", None),  # pieces "[1", " 2]", ...: no numbers, InternVL's zero box
        ("[1, 2, 3, 4, 5]", None),  # the last piece is "4, 5"
        ("[a, b, c, d] then [1, 2, 3, 4]", None),  # only the first match is read
        ("(100, 200, 900, 900)", None),  # no square brackets
        ("no box", None),
    ],
)
def test_internvl_parser_hand_computed(answer, box):
    assert harness_parse(answer, "internvl") == box


def test_harness_formats_hand_computed():
    # LLaVA: a value above 1 stays as it is (no pixel heuristic, no clipping)
    assert harness_normalize((0.10, 0.20, 1.02, 0.90), "normalized", (640, 480)) == (0.10, 0.20, 1.02, 0.90)
    # Qwen2.5-VL: pixels over the original image's width and height
    assert harness_normalize((50, 25, 150, 75), "pixels", (200, 100)) == (0.25, 0.25, 0.75, 0.75)
    # Qwen3-VL: 0..1000
    assert harness_normalize((250, 100, 750, 900), "per_mille", (200, 100)) == (0.25, 0.1, 0.75, 0.9)
    # the paper converts only a box with some value above 1: a box of values <= 1 is taken as 0..1
    assert harness_normalize((0, 0, 1, 1), "pixels", (200, 100)) == (0.0, 0.0, 1.0, 1.0)
    assert harness_normalize((0, 0, 1, 1), "per_mille", (200, 100)) == (0.0, 0.0, 1.0, 1.0)


def test_harness_iou_and_centre_do_not_clip():
    gt = (0.1, 0.2, 0.9, 0.9)
    # the LLaVA box above 1: intersection 0.8 x 0.7, union 0.92 x 0.7 (its own area)
    assert harness_iou((0.10, 0.20, 1.02, 0.90), gt) == pytest.approx(0.56 / 0.644)
    # beyond the image it still counts: 0.25 / (1 + 0.25 - 0.25)
    assert harness_iou((0.5, 0.5, 1.5, 1.5), (0.5, 0.5, 1.0, 1.0)) == pytest.approx(0.25)
    assert harness_iou((0.9, 0.9, 0.6, 0.6), (0.5, 0.5, 1.0, 1.0)) == 0.0  # inverted corners
    assert harness_iou((0.3, 0.3, 0.3, 0.3), (0.3, 0.3, 0.3, 0.3)) == 0.0  # union 0 (lmms-eval divides by zero)
    assert harness_center((0.5, 0.5, 1.5, 1.5), (0.9, 0.9, 1.0, 1.0))  # unclipped centre (1, 1)
    assert not harness_center((0.5, 0.5, 1.5, 1.5), (0.7, 0.7, 0.8, 0.8))


def test_harness_scores_an_unparsed_answer_as_the_zero_box():
    m = harness_rec_metrics([None, None], [(0.0, 0.0, 0.3, 0.3), (0.1, 0.1, 0.3, 0.3)])
    assert m["acc@0.1"].value == 0.0 and m["miou"].value == 0.0 and m["parsed"].value == 0.0
    assert m["center_acc"].value == 0.5  # the centre (0, 0) lies in a ground truth touching the corner


def _rec_sample(tmp_path, size=(200, 100), bbox_xywh=(20, 20, 160, 70)):
    write_refcoco_rows(tmp_path, [(Image.new("RGB", size), list(bbox_xywh), ["the red cup"])])
    task = get_task("refcoco_val")
    (sample,) = task.load(tmp_path)
    return task, sample


def _records(task, sample, answers, family, frame=None):
    return [
        {"id": f"{k}", "target": sample.target, "meta": sample.meta,
         "prediction": task.parse(sample, answer, family, frame)}
        for k, answer in enumerate(answers)
    ]


def test_rec_task_llava_box_above_one_scores_as_the_paper(tmp_path):
    task, sample = _rec_sample(tmp_path)  # target (0.1, 0.2, 0.9, 0.9)
    assert sample.target == [0.1, 0.2, 0.9, 0.9]
    assert task.prompt(sample, "llava").endswith("this sentence describes: the red cup")
    metrics = task.score(_records(task, sample, ["[0.10, 0.20, 1.02, 0.90]"], "llava"))
    assert metrics["miou"].value == pytest.approx(0.56 / 0.644) and metrics["acc@0.5"].value == 1.0
    # the careful reading takes the box for pixels of the 200 x 100 image: a speck in the corner
    assert metrics["careful/acc@0.1"].value == 0.0 and metrics["careful/miou"].value == 0.0


def test_rec_task_qwen2_5_pixels_over_the_original_image(tmp_path):
    task, sample = _rec_sample(tmp_path)
    answer = '```json\n[\n\t{"bbox_2d": [20, 20, 180, 90], "label": "the red cup"}\n]\n```'
    assert task.prompt(sample, "qwen2_5_vl") == QWEN_PROMPT
    (record,) = _records(task, sample, [answer], "qwen2_5_vl", frame=(100, 50))
    assert record["prediction"]["box"] == pytest.approx([0.1, 0.2, 0.9, 0.9])  # the original 200 x 100
    assert record["prediction"]["careful_box"] == pytest.approx([0.2, 0.4, 1.8, 1.8])  # the frame given
    metrics = task.score([record])
    assert metrics["acc@0.9"].value == 1.0
    # careful: clipped to (0.2, 0.4, 1, 1): 0.7 x 0.5 inside the target's 0.8 x 0.7
    assert metrics["careful/miou"].value == pytest.approx(0.35 / (0.56 + 0.48 - 0.35))


def test_rec_task_qwen3_per_mille(tmp_path):
    task, sample = _rec_sample(tmp_path)
    assert task.prompt(sample, "qwen3_vl") == QWEN_PROMPT
    answers = ['[{"bbox_2d": [100, 200, 900, 900], "label": "the red cup"}]', "(100, 200, 500, 900)"]
    first, second = _records(task, sample, answers, "qwen3_vl")
    assert first["prediction"]["box"] == pytest.approx([0.1, 0.2, 0.9, 0.9])
    assert second["prediction"]["box"] == pytest.approx([0.1, 0.2, 0.5, 0.9])
    metrics = task.score([first, second])
    # IoUs 1 and (0.4 x 0.7) / (0.8 x 0.7) = 0.5
    assert metrics["miou"].value == pytest.approx(0.75) and metrics["acc@0.5"].value == 1.0
    assert metrics["careful/miou"].value == pytest.approx(0.75)


def test_rec_task_new_families(tmp_path):
    """LLaVA-NeXT reads as LLaVA, Qwen2-VL as Qwen3-VL (0-1000), InternVL its <box>[[...]]</box> on 0-1000."""
    task, sample = _rec_sample(tmp_path)  # target (0.1, 0.2, 0.9, 0.9) of a 200 x 100 image
    assert task.prompt(sample, "llava_next") == task.prompt(sample, "llava")
    assert task.prompt(sample, "qwen2_vl") == QWEN_PROMPT
    assert task.prompt(sample, "internvl").endswith("this sentence describes: <ref>the red cup</ref>")
    (llava_next,) = _records(task, sample, ["[0.10, 0.20, 1.02, 0.90]"], "llava_next")
    assert llava_next["prediction"]["box"] == pytest.approx([0.10, 0.20, 1.02, 0.90])
    (qwen2,) = _records(task, sample, ['[{"bbox_2d": [100, 200, 500, 900], "label": "the red cup"}]'], "qwen2_vl")
    assert qwen2["prediction"]["box"] == pytest.approx([0.1, 0.2, 0.5, 0.9])
    answers = ["<ref>the red cup</ref><box>[[100, 200, 900, 900]]</box>", "<box>[[a, b, c, d]]</box>"]
    first, second = _records(task, sample, answers, "internvl")
    assert first["prediction"]["box"] == pytest.approx([0.1, 0.2, 0.9, 0.9])
    assert first["prediction"]["careful_box"] == pytest.approx([0.1, 0.2, 0.9, 0.9])
    assert second["prediction"]["box"] is None
    metrics = task.score([first, second])
    # IoUs 1 and 0 (the zero box); the careful reading finds no box in the second either
    assert metrics["miou"].value == pytest.approx(0.5) and metrics["parsed"].value == 0.5
    assert metrics["careful/miou"].value == pytest.approx(0.5)


# ----------------------------------------------------------------------------- POPE and GQA


@pytest.mark.parametrize(
    ("answer", "whole"),
    [("yes", "yes"), ("  No\n", "no"), ("Yes.", "other"), ("yes, there is", "other"), ("There is", "other")],
)
def test_pope_whole_answer_label(answer, whole):
    assert whole_answer_label(answer) == whole


def test_pope_first_word_is_the_careful_reading():
    assert [yes_no_label(a) for a in ("Yes.", "yes, there is", "There is")] == ["yes", "yes", "other"]


def test_gqa_lmms_strips_before_dropping_punctuation():
    assert lmms_exact_match(" Yes.\n", "yes")
    assert not lmms_exact_match("yes .", "yes")  # the space left by the dropped period stays
    assert exact_match("yes .", "yes")  # the careful reading strips after
    assert not lmms_exact_match("a red car", "red car")


# ----------------------------------------------------------------------------- MMBench

MMB_OPTIONS = {"A": "red 0", "B": "green 0", "C": "blue 0", "D": "nan"}


@pytest.mark.parametrize(
    ("answer", "choice"),
    [
        ("B", "B"),
        ("(C)", "C"),
        ("The answer is C because it is blue.", "C"),  # one lone capital letter among the words
        ("A cat is on the left, so A", "A"),  # "A" among many words: read at the end of the answer
        ("I think it is green 0.", "B"),  # one option's text inside the prose
        ("green 0 or blue 0", None),  # two options' texts and no letter
        ("It is a banana", "D"),  # the "nan" text of a missing option is inside "banana", as in lmms-eval
        ("  b  ", None),  # a lower-case letter is no letter
        ("E.", "E"),  # the letter matcher allows E although the question has no option E
    ],
)
def test_mmbench_lmms_reading_hand_computed(answer, choice):
    from reroute.eval.metrics.mmbench import extract_choice, lmms_choice

    assert lmms_choice(answer, MMB_OPTIONS) == choice
    if answer == "It is a banana":
        assert extract_choice(answer, MMB_OPTIONS) is None  # the careful reading drops "nan" options
