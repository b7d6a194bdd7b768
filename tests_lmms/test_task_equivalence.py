"""Our task modules against lmms-eval's own task functions, in the lmms environment (`make test-lmms`).

For REC (LLaVA), POPE, GQA, MME and MMBench, lmms-eval's ``doc_to_text``, ``process_results`` and
aggregations run on the same fixture rows (tests/helpers/eval_fixtures.py) and the same model
answers as our tasks: prompts must be equal string for string, per-sample scores and headline
metrics equal. The answers include the hard cases (a LLaVA box with a value above 1, "Yes." for
POPE, prose for MMBench). The POPE, GQA, MME and MMBench prompts are lmms-eval's for every built-in
family. For REC, stock lmms-eval is the paper's harness on LLaVA (and LLaVA-NeXT/OneVision, read the
same way); the Qwen formats (the paper's patch) and InternVL's own reading are checked on
hand-computed cases in tests/eval/test_eval_harness.py.
lmms-eval's task settings (post-prompts, metric options) are read from its own YAML files.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import yaml

from tests.helpers.eval_fixtures import (
    fixture_image,
    write_gqa,
    write_mmbench,
    write_mme,
    write_pope,
    write_refcoco_rows,
)

pytest.importorskip("lmms_eval")

import lmms_eval.tasks as lmms_tasks
from lmms_eval.api.metrics import exact_match_hf_evaluate
from lmms_eval.tasks._task_utils.mcq_extract import extract_mcq_answer
from lmms_eval.tasks.gqa import utils as gqa_utils
from lmms_eval.tasks.mmbench import en_utils as mmbench_utils
from lmms_eval.tasks.mmbench.mmbench_evals import MMBench_Evaluator
from lmms_eval.tasks.mme import utils as mme_utils
from lmms_eval.tasks.pope import utils as pope_utils
from lmms_eval.tasks.refcoco import utils_rec

from reroute.eval.tasks import get_task

TASKS_DIR = Path(lmms_tasks.__file__).parent


class _IgnoreTags(yaml.SafeLoader):
    """lmms-eval's YAML with its ``!function`` tags read as None (only plain settings are needed)."""


_IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: None)


def lmms_config(relative: str) -> dict:
    return yaml.load((TASKS_DIR / relative).read_text(), Loader=_IgnoreTags)


def default_kwargs(relative: str) -> dict:
    return lmms_config(relative)["lmms_eval_specific_kwargs"]["default"]


def our_records(task, samples, answers, family="llava"):
    """Records as `reroute.eval.runner` writes them (the fields `Task.score` reads)."""
    return [
        {"id": s.id, "target": s.target, "meta": s.meta, "prediction": task.parse(s, a, family)}
        for s, a in zip(samples, answers)
    ]


# ----------------------------------------------------------------------------- REC (LLaVA)

REC_ANSWERS = [
    "[0.1, 0.2, 0.9, 0.9]",  # exact
    "[0.10, 0.20, 1.02, 0.90]",  # a value above 1: kept as it is (our careful reading divides it by the image)
    "The region is [0.3,0.3,0.7,0.8].",
    "[0.5, 0.5, 0.2, 0.2]",  # inverted corners
    "I cannot find it.",  # unparsed: the box [0, 0, 0, 0]
    "[0.0, 0.0, 0.05, 0.05]",
    "[0.2 , 0.2, 0.8, 0.8]",  # a space before a comma: lmms-eval's pattern finds no box
    "[-0.2, 0.1, 0.6, 1.4]",
]


#: the built-in families whose REC headline is stock lmms-eval's reading (LLaVA's protocol)
LLAVA_READ = ("llava", "llava_next")
#: every built-in family (the short-answer tasks are lmms-eval's for all of them)
BUILTIN = ("internvl", "llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")


@pytest.mark.parametrize("family", LLAVA_READ)
def test_rec_llava_equals_lmms_eval(tmp_path, family):
    rows = write_refcoco_rows(
        tmp_path,
        [
            (fixture_image(0, (200, 100)), [20, 20, 160, 70], ["the red cup", "cup on the left", "red thing"]),
            (fixture_image(1, (64, 48)), [0, 0, 32, 24], ["top left", "corner", "the square", "first one", "it"]),
        ],
    )
    task = get_task("refcoco_val")
    samples = task.load(tmp_path)
    docs = list(utils_rec.refcoco_bbox_rec_preprocess_dataset(datasets.Dataset.from_list(rows)))
    assert len(docs) == len(samples) == len(REC_ANSWERS)

    assert [task.prompt(s, family) for s in samples] == [utils_rec.refcoco_bbox_rec_doc_to_text(d) for d in docs]
    assert [s.target for s in samples] == [d["bbox"] for d in docs]

    lmms = [utils_rec.refcoco_bbox_rec_process_result(d, [a])["refcoco_IoU"] for d, a in zip(docs, REC_ANSWERS)]
    records = our_records(task, samples, REC_ANSWERS, family)
    assert [r["prediction"]["box"] or [0, 0, 0, 0] for r in records] == [item["pred"] for item in lmms]
    metrics = task.score(records)
    for ours, theirs in [
        ("acc@0.1", utils_rec.refcoco_bbox_rec_acc01),
        ("acc@0.3", utils_rec.refcoco_bbox_rec_acc03),
        ("acc@0.5", utils_rec.refcoco_bbox_rec_acc05),
        ("acc@0.7", utils_rec.refcoco_bbox_rec_acc07),
        ("acc@0.9", utils_rec.refcoco_bbox_rec_acc09),
        ("center_acc", utils_rec.refcoco_bbox_rec_center_acc),
    ]:
        assert metrics[ours].value == theirs(lmms), ours
    assert metrics["miou"].value == pytest.approx(utils_rec.refcoco_bbox_rec_iou(lmms), rel=1e-12, abs=1e-15)
    # the hard cases do score differently under the careful reading
    assert metrics["careful/acc@0.5"].value != metrics["acc@0.5"].value


def test_rec_round_brackets_are_the_papers_patch_not_stock_lmms_eval(tmp_path):
    """The one documented difference from stock lmms-eval on LLaVA (docs/evaluation.md): the paper's patch
    also reads "(a, b, c, d)"; stock lmms-eval scores such an answer as [0, 0, 0, 0]."""
    rows = write_refcoco_rows(tmp_path, [(fixture_image(0, (200, 100)), [20, 20, 160, 70], ["the red cup"])])
    task = get_task("refcoco_val")
    (sample,) = task.load(tmp_path)
    (doc,) = list(utils_rec.refcoco_bbox_rec_preprocess_dataset(datasets.Dataset.from_list(rows)))
    answer = "(0.1, 0.2, 0.9, 0.9)"
    assert utils_rec.refcoco_bbox_rec_process_result(doc, [answer])["refcoco_IoU"]["pred"] == [0, 0, 0, 0]
    assert task.parse(sample, answer, "llava")["box"] == [0.1, 0.2, 0.9, 0.9]


# ----------------------------------------------------------------------------- POPE

POPE_ANSWERS = ["Yes", "yes", "Yes.", "No", " no\n", "no, there is not", "There is a dog.", "yes", "No.", "no", "YES",
                "no"]


@pytest.mark.parametrize("family", BUILTIN)
def test_pope_equals_lmms_eval(tmp_path, family):
    rows = write_pope(tmp_path, per_category=4)
    task = get_task("pope")
    samples = task.load(tmp_path)
    assert len(samples) == len(rows) == len(POPE_ANSWERS)
    kwargs = default_kwargs("pope/pope.yaml")
    assert [task.prompt(s, family) for s in samples] == [pope_utils.pope_doc_to_text(r, kwargs) for r in rows]

    lmms = [pope_utils.pope_process_results(r, [a])["pope_accuracy"] for r, a in zip(rows, POPE_ANSWERS)]
    records = our_records(task, samples, POPE_ANSWERS, family)
    assert [float(r["prediction"]["label"] == r["target"]) for r in records] == [item["score"] for item in lmms]
    metrics = task.score(records)
    assert metrics["accuracy"].value == pope_utils.pope_aggregate_accuracy(lmms)
    assert metrics["precision"].value == pope_utils.pope_aggregate_precision(lmms)
    assert metrics["recall"].value == pope_utils.pope_aggregate_recall(lmms)
    assert metrics["f1"].value == pope_utils.pope_aggregate_f1_score(lmms)
    # "Yes." and the prose answers are read by the careful (first-word) reading only
    assert metrics["careful/accuracy"].value > metrics["accuracy"].value


# ----------------------------------------------------------------------------- GQA


def test_gqa_equals_lmms_eval(tmp_path):
    rows = write_gqa(tmp_path, n_images=2, questions_per_image=3)
    task = get_task("gqa")
    samples = task.load(tmp_path)
    kwargs = default_kwargs("gqa/gqa.yaml")
    for family in BUILTIN:  # every family asks lmms-eval's question
        assert [task.prompt(s, family) for s in samples] == [gqa_utils.gqa_doc_to_text(r, kwargs) for r in rows], family

    answers = [r["answer"] for r in rows]
    answers[0] = f" {answers[0].upper()}.\n"  # stripped, lower-cased, period dropped: right
    answers[1] = f"{answers[1]} ."  # the space before the dropped period stays: wrong for lmms-eval
    answers[2] = "a " + answers[2]
    # lmms-eval's generate_until scoring: the answer stripped, then exact_match with the YAML's options
    (options,) = lmms_config("gqa/gqa.yaml")["metric_list"]
    options = {k: v for k, v in options.items() if k in ("ignore_case", "ignore_punctuation", "ignore_numbers")}
    lmms = [
        float(exact_match_hf_evaluate(predictions=[a.strip()], references=[r["answer"]], **options)["exact_match"])
        for r, a in zip(rows, answers)
    ]
    records = our_records(task, samples, answers)
    metrics = task.score(records)
    assert lmms == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert metrics["accuracy"].value == sum(lmms) / len(lmms)
    assert metrics["careful/accuracy"].value == 5 / 6  # the careful reading strips after dropping punctuation


# ----------------------------------------------------------------------------- MME


def test_mme_equals_lmms_eval(tmp_path):
    rows = write_mme(tmp_path)
    task = get_task("mme")
    samples = task.load(tmp_path)
    kwargs = default_kwargs("mme/mme.yaml")
    for family in BUILTIN:  # every family asks lmms-eval's question
        assert [task.prompt(s, family) for s in samples] == [mme_utils.mme_doc_to_text(r, kwargs) for r in rows], family

    pool = ["Yes", "No", "yes.", "no", "Yes, it is.", "N", "I am not sure", "No, it is not."]
    answers = [pool[i % len(pool)] for i in range(len(rows))]
    lmms = [next(iter(mme_utils.mme_process_results(r, [a]).values())) for r, a in zip(rows, answers)]
    records = our_records(task, samples, answers)
    assert [float(r["prediction"]["label"] == r["target"]) for r in records] == [item["score"] for item in lmms]
    metrics = task.score(records)
    for name, group in (("perception", "Perception"), ("cognition", "Cognition")):
        wanted = [item for item in lmms if item["category"] in mme_utils.eval_type_dict[group]]
        if wanted:
            assert metrics[name].value == pytest.approx(mme_utils.mme_aggregate_results(wanted), rel=1e-12), name


# ----------------------------------------------------------------------------- MMBench


def test_mmbench_prompt_equals_lmms_eval(tmp_path):
    rows = write_mmbench(tmp_path, n_questions=2)
    task = get_task("mmbench_en_dev")
    samples = task.load(tmp_path)
    kwargs = default_kwargs("mmbench/_default_template_mmbench_en_yaml")
    docs = [{**r, "L2-category": r.get("L2-category", r.get("l2-category"))} for r in rows]
    for family in BUILTIN:  # every family asks lmms-eval's question
        theirs = [mmbench_utils.mmbench_doc_to_text(d, kwargs) for d in docs]
        assert [task.prompt(s, family) for s in samples] == theirs, family


MMBENCH_ANSWERS = [  # targets per group: A, C, B
    "A", "The answer is C because the thing is red.", "(B)",  # right: letters, prose naming one letter
    "It is red 1.", "C. red 1", "none of them",  # wrong: nothing to read in the last
    "A", "I think the colour is red 2.", "Option B:",  # right: one option's text in prose
    "A cat is on the left, so A", "C.", "D",  # wrong: D ("A" among many words is not a lone letter)
    "red 4", "C. red", "The correct option is (B).",  # right
    "  b  ", "green 5 or blue 5", "B)",  # wrong: a lower-case letter is no letter
]


def test_mmbench_scores_equal_lmms_eval_static(tmp_path):
    """lmms-eval's API-free scoring (``mmbench_en_dev_static``: its rule matcher, then its ranked letter
    extraction), per row and per circular group."""
    rows = write_mmbench(tmp_path, n_questions=6)
    task = get_task("mmbench_en_dev")
    samples = task.load(tmp_path)
    assert len(samples) == len(MMBENCH_ANSWERS)
    docs = [{**r, "L2-category": r.get("L2-category", r.get("l2-category"))} for r in rows]
    results = [mmbench_utils.mmbench_process_results(d, [a])["gpt_eval_score"] for d, a in zip(docs, MMBENCH_ANSWERS)]
    evaluator = MMBench_Evaluator()

    def lmms_reading(item: dict) -> str:
        choices = evaluator.build_choices(item)
        return evaluator.can_infer(item["prediction"], dict(choices)) or extract_mcq_answer(
            item["prediction"], choices=sorted(choices)
        )

    records = our_records(task, samples, MMBENCH_ANSWERS)
    assert [r["prediction"]["choice"] or "" for r in records] == [lmms_reading(item) for item in results]
    overall, by_category, _ = evaluator.eval_result(results, eval_method="static")
    metrics = task.score(records)
    assert metrics["circular_accuracy"].value == overall
    for category, value in by_category.items():
        assert metrics[f"{category}/circular_accuracy"].value == value, category
    assert overall == 0.5 and by_category == {"color": 1.0, "shape": 0.0}  # groups 0, 2, 4 right
