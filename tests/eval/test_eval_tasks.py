"""Benchmark tasks on fixture files written in the hub's real layouts: loading, prompts, parsing, scoring."""

from __future__ import annotations

import pickle
import re
import shutil

import numpy as np
import pytest
from tests.helpers.eval_fixtures import (
    POPE_FEATURES,
    fixture_image,
    image_value,
    write_gqa,
    write_mmbench,
    write_mme,
    write_pope,
    write_refcoco,
    write_refcoco_rows,
    write_split,
)
from PIL import Image

from reroute.demo.synthetic import GROUNDING_PREFIX
from reroute.eval.task import model_families
from reroute.eval.tasks import ALIASES, TASKS, UnknownTaskError, get_task
from reroute.eval.tasks.common import SHORT_ANSWER_POST_PROMPT as POST
from reroute.eval.tasks.files import DatasetFormatError, HubDataset, MissingSplitError, find_split


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def records(task, samples, answers, family="llava", frames=None):
    """What the runner would store: one record per sample with the parsed prediction."""
    frames = frames or [None] * len(samples)
    return [
        {"id": s.id, "target": s.target, "meta": s.meta, "prediction": task.parse(s, a, family, frame=f)}
        for s, a, f in zip(samples, answers, frames)
    ]


# ----------------------------------------------------------------------------- registry


def test_registry_names_and_lmms_eval_aliases():
    assert list(TASKS) == [
        "refcoco_val", "refcoco_test", "refcoco_testA", "refcoco_testB",
        "refcoco+_val", "refcoco+_testA", "refcoco+_testB",
        "refcocog_val", "refcocog_test",
        "pope", "gqa", "mme", "mmbench_en_dev",
    ]  # fmt: skip
    for name, task in TASKS.items():
        assert task.name == name and get_task(name) is task
    assert {t.family: t.headline for t in TASKS.values()} == {
        "rec": "acc@0.5", "pope": "f1", "gqa": "accuracy", "mme": "perception", "mmbench": "circular_accuracy",
    }  # fmt: skip
    assert get_task("refcoco_bbox_rec_val") is TASKS["refcoco_val"]
    assert get_task("refcoco+_bbox_rec_testB") is TASKS["refcoco+_testB"]
    assert get_task("refcocog_bbox_rec_test") is TASKS["refcocog_test"]
    assert len(ALIASES) == 9


def test_unknown_task_is_one_line_listing_the_names():
    expected = (
        "unknown task 'refcoco_train'; valid tasks: refcoco_val, refcoco_test, refcoco_testA, refcoco_testB, "
        "refcoco+_val, refcoco+_testA, refcoco+_testB, refcocog_val, refcocog_test, pope, gqa, mme, mmbench_en_dev "
        "(lmms-eval names such as refcoco_bbox_rec_val also work)"
    )
    with pytest.raises(UnknownTaskError, match=f"^{re.escape(expected)}$"):
        get_task("refcoco_train")


def test_unknown_model_family_and_bad_limit_are_refused(tmp_path):
    write_pope(tmp_path)
    task = get_task("pope")
    sample = task.load(tmp_path, limit=1)[0]
    with pytest.raises(ValueError, match=r"^unknown model family 'mistral3'; expected one of internvl, llava, llava_next, qwen2_vl, qwen2_5_vl, qwen3_vl, demo$"):
        task.prompt(sample, "mistral3")
    with pytest.raises(ValueError, match=r"^limit must be a positive integer or None, got 0$"):
        task.load(tmp_path, limit=0)


# ----------------------------------------------------------------------------- REC


def test_refcoco_explodes_expressions_with_normalised_targets(tmp_path):
    rows = write_refcoco(tmp_path, split="val", n_objects=4, n_shards=2)
    samples = get_task("refcoco_val").load(tmp_path)
    assert len(samples) == sum(len(r["answer"]) for r in rows) == 1 + 2 + 3 + 1
    expected = [(r, k, e) for r in rows for k, e in enumerate(r["answer"])]
    for s, (row, k, expression) in zip(samples, expected):
        x, y, w, h = row["bbox"]
        assert s.task == "refcoco_val" and s.question == expression
        assert s.id == f"{row['question_id']}/{k}"
        assert s.target == pytest.approx([x / 64, y / 48, (x + w) / 64, (y + h) / 48])
        assert s.meta["image_size"] == [64, 48]
        (image,) = s.load_images()
        assert image.mode == "RGB" and np.array_equal(pixels(image), pixels(row["image"]))
    assert len({s.id for s in samples}) == len(samples)
    assert [s.id for s in get_task("refcoco_val").load(tmp_path)] == [s.id for s in samples]  # stable


def test_refcoco_limit_counts_expressions(tmp_path):
    write_refcoco(tmp_path)
    full = get_task("refcoco_val").load(tmp_path)
    assert [s.id for s in get_task("refcoco_val").load(tmp_path, limit=2)] == [s.id for s in full[:2]]


def test_rec_rows_writer_for_given_scenes_and_image_sizes(tmp_path):
    wide = Image.new("RGB", (200, 100), (10, 20, 30))
    write_refcoco_rows(tmp_path, [(wide, [50, 25, 100, 50], ["the box", "the middle"])], split="testB")
    samples = get_task("refcoco_testB").load(tmp_path)
    assert [s.question for s in samples] == ["the box", "the middle"]
    assert samples[0].target == [0.25, 0.25, 0.75, 0.75]
    assert samples[0].meta["image_size"] == [200, 100]


def test_rec_prompts_per_family(tmp_path):
    write_refcoco(tmp_path, n_objects=1)
    task = get_task("refcoco_val")
    sample = task.load(tmp_path)[0]
    assert task.prompt(sample, "llava") == (
        "Bounding box coordinates are specified in the format (top-left x, top-left y, bottom-right x, bottom-right y). "
        "All values are floating point numbers bounded between 0 and 1. Please provide the bounding box coordinate of "
        "the region this sentence describes: val object 0 phrase 0"
    )
    assert task.prompt(sample, "qwen2_5_vl") == (
        "Locate val object 0 phrase 0 in this image and output the bbox coordinates in JSON format."
    )
    assert task.prompt(sample, "demo") == f"{GROUNDING_PREFIX} val object 0 phrase 0."


def test_rec_parse_normalised_pixel_and_json_answers(tmp_path):
    write_refcoco_rows(tmp_path, [(Image.new("RGB", (200, 100)), [50, 25, 100, 50], ["the box"])])
    task = get_task("refcoco_val")
    (sample,) = task.load(tmp_path)
    assert task.parse(sample, "[0.25, 0.25, 0.75, 0.75]", "llava")["box"] == [0.25, 0.25, 0.75, 0.75]
    # pixels: the headline divides by the original size (the paper's harness); the careful reading by the
    # model's frame when given
    json_answer = '```json\n[\n\t{"bbox_2d": [50, 25, 150, 75], "label": "the box"}\n]\n```'
    assert task.parse(sample, json_answer, "qwen2_5_vl")["box"] == [0.25, 0.25, 0.75, 0.75]
    assert task.parse(sample, json_answer, "qwen2_5_vl", frame=(100, 50))["box"] == [0.25, 0.25, 0.75, 0.75]
    assert task.parse(sample, json_answer, "qwen2_5_vl", frame=(100, 50))["careful_box"] == [0.5, 0.5, 1.5, 1.5]
    assert task.parse(sample, "no box here", "llava") == {
        "box": None, "raw_box": None, "careful_box": None, "careful_pixels": False
    }


def test_rec_score_on_records(tmp_path):
    write_refcoco(tmp_path, n_objects=3)  # 1 + 2 + 3 expressions
    task = get_task("refcoco_val")
    samples = task.load(tmp_path)
    answers = ["[" + ", ".join(f"{v:.4f}" for v in s.target) + "]" for s in samples]
    answers[0] = "I do not know"
    metrics = task.score(records(task, samples, answers))
    assert metrics["acc@0.5"].value == pytest.approx(5 / 6) and metrics["acc@0.5"].n == 6
    assert metrics["parsed"].value == pytest.approx(5 / 6)


# ----------------------------------------------------------------------------- layouts and errors


@pytest.mark.parametrize(
    ("layout", "org", "name"),
    [
        ("org", "lmms-lab", "RefCOCOPlus"),
        ("org", "lmms-lab-encoder", "RefCOCOplus"),  # lmms-eval 0.7.3's org and spelling
        ("snapshot", "lmms-lab", "RefCOCOPlus"),
        ("hf_cache", "lmms-lab", "RefCOCOPlus"),
        ("hf_cache", "lmms-lab-encoder", "RefCOCOplus"),
    ],
)
def test_every_layout_is_found(tmp_path, layout, org, name):
    rows = write_refcoco(tmp_path, split="testA", name=name, layout=layout, org=org)
    samples = get_task("refcoco+_testA").load(tmp_path)
    assert len(samples) == sum(len(r["answer"]) for r in rows)


def test_hf_cache_under_hub_folder_and_data_dir_being_the_copy(tmp_path):
    write_pope(tmp_path / "hub", layout="hf_cache")
    assert len(get_task("pope").load(tmp_path)) == 12
    snapshot = next((tmp_path / "hub").glob("datasets--lmms-lab--POPE/snapshots/*"))
    assert len(get_task("pope").load(snapshot)) == 12
    write_pope(tmp_path / "copies", layout="snapshot")
    assert len(get_task("pope").load(tmp_path / "copies" / "POPE")) == 12


def test_converted_parquet_layout(tmp_path):
    (path,) = write_split(tmp_path, "POPE", "data", "test", [_pope_row(0)], POPE_FEATURES)
    converted = tmp_path / "lmms-lab" / "POPE" / "default" / "test"
    converted.mkdir(parents=True)
    shutil.move(path, converted / "0000.parquet")
    assert [p.name for p in find_split(tmp_path, HubDataset(("POPE",)), "test")] == ["0000.parquet"]


def test_another_datasets_copy_is_not_taken(tmp_path):
    write_refcoco(tmp_path, name="RefCOCOg", layout="snapshot")  # <tmp>/RefCOCOg/data/val-*.parquet
    with pytest.raises(MissingSplitError):
        get_task("refcoco_val").load(tmp_path / "RefCOCOg")


def test_missing_split_message(tmp_path):
    write_refcoco(tmp_path, split="val")
    expected = (
        f"no 'testA' split of lmms-lab/RefCOCO under {tmp_path} (looked for lmms-lab/RefCOCO/data/testA-*.parquet "
        f"and the other layouts in docs/evaluation-data.md); download it with: hf download lmms-lab/RefCOCO "
        f"--repo-type dataset --include 'data/testA-*' --local-dir {tmp_path}/lmms-lab/RefCOCO"
    )
    with pytest.raises(MissingSplitError, match=f"^{re.escape(expected)}$"):
        get_task("refcoco_testA").load(tmp_path)


def test_missing_data_folder_message(tmp_path):
    missing = tmp_path / "nowhere"
    expected = (
        f"data folder {missing} does not exist (it holds the downloaded benchmarks, see docs/evaluation-data.md); "
        f"download this split with: hf download lmms-lab/POPE --repo-type dataset --include 'data/test-*' "
        f"--local-dir {missing}/lmms-lab/POPE"
    )
    with pytest.raises(MissingSplitError, match=f"^{re.escape(expected)}$"):
        get_task("pope").load(missing)


def test_missing_gqa_images_config_names_its_pattern(tmp_path):
    write_gqa(tmp_path)
    shutil.rmtree(tmp_path / "lmms-lab" / "GQA" / "testdev_balanced_images")
    expected = (
        f"no 'testdev' split of lmms-lab/GQA under {tmp_path} (looked for "
        f"lmms-lab/GQA/testdev_balanced_images/testdev-*.parquet and the other layouts in docs/evaluation-data.md); "
        f"download it with: hf download lmms-lab/GQA --repo-type dataset --include 'testdev_balanced_images/testdev-*' "
        f"--local-dir {tmp_path}/lmms-lab/GQA"
    )
    with pytest.raises(MissingSplitError, match=f"^{re.escape(expected)}$"):
        get_task("gqa").load(tmp_path)


def test_file_without_the_tasks_columns(tmp_path):
    write_refcoco(tmp_path, name="POPE", split="test", n_shards=1)  # REC columns where POPE is expected
    (path,) = (tmp_path / "lmms-lab" / "POPE" / "data").glob("*.parquet")
    expected = f"{path} has no column(s) category, image_source: it is not a lmms-lab/POPE file (columns: "
    with pytest.raises(DatasetFormatError, match=f"^{re.escape(expected)}"):
        get_task("pope").load(tmp_path)


def test_samples_pickle_and_still_load_their_images(tmp_path):
    rows = write_pope(tmp_path)
    sample = pickle.loads(pickle.dumps(get_task("pope").load(tmp_path)[5]))
    assert np.array_equal(pixels(sample.load_images()[0]), pixels(rows[5]["image"]))


# ----------------------------------------------------------------------------- POPE


def _pope_row(n):
    return {
        "id": str(n), "question_id": str(n), "question": "Is there a cat in the image?", "answer": "no",
        "image_source": "x", "image": image_value(fixture_image(n), "x.jpg"), "category": "random",
    }  # fmt: skip


def test_pope_loads_every_category_with_images(tmp_path):
    rows = write_pope(tmp_path, per_category=4)
    task = get_task("pope")
    samples = task.load(tmp_path)
    assert len(samples) == 12 and len({s.id for s in samples}) == 12
    assert [s.meta["category"] for s in samples] == [r["category"] for r in rows]
    assert [s.target for s in samples] == [r["answer"] for r in rows]
    assert samples[0].id == "adversarial/1"
    for s, r in zip(samples, rows):
        assert np.array_equal(pixels(s.load_images()[0]), pixels(r["image"]))
    assert POST == "\nAnswer the question using a single word or phrase."  # lmms-eval's post-prompt
    assert task.prompt(samples[0], "llava") == "Is there a dog in the image?" + POST
    assert task.prompt(samples[0], "qwen2_5_vl") == task.prompt(samples[0], "llava")
    assert task.prompt(samples[0], "demo") == "Is there a dog in the image?"


def test_pope_score_per_category(tmp_path):
    write_pope(tmp_path, per_category=2)  # yes, no in each category
    task = get_task("pope")
    samples = task.load(tmp_path)
    answers = ["Yes.", "No", "Yes", "yes", "no", "No."]  # popular gets one wrong, random gets "yes" wrong
    metrics = task.score(records(task, samples, answers))
    # the careful reading (first word): "Yes." and "No." are read
    assert metrics["careful/accuracy"].value == pytest.approx(4 / 6)
    assert metrics["careful/adversarial/accuracy"].value == 1.0
    assert metrics["careful/popular/accuracy"].value == 0.5 and metrics["careful/popular/precision"].value == 0.5
    assert metrics["careful/random/accuracy"].value == 0.5 and metrics["careful/random/recall"].value == 0.0
    # the headline (lmms-eval): "Yes." and "No." are neither; the "Yes." to a "yes" question is outside recall
    assert metrics["accuracy"].value == pytest.approx(2 / 6)
    assert metrics["adversarial/accuracy"].value == 0.5
    assert metrics["adversarial/recall"].n == 0  # no "yes" or "no" answer to its "yes" question (lmms-eval: 0)
    assert metrics["precision"].value == 0.5 and metrics["recall"].value == 0.5 and metrics["f1"].value == 0.5


# ----------------------------------------------------------------------------- GQA


def test_gqa_joins_images_by_image_id(tmp_path):
    rows = write_gqa(tmp_path, n_images=3, questions_per_image=2)
    task = get_task("gqa")
    samples = task.load(tmp_path)
    assert [s.id for s in samples] == [r["id"] for r in rows]
    assert [s.target for s in samples] == [r["answer"] for r in rows]
    for s, r in zip(samples, rows):
        assert s.meta["image_id"] == r["imageId"]
        assert np.array_equal(pixels(s.load_images()[0]), pixels(r["image"]))
    assert task.prompt(samples[0], "llava") == "What is in region 0 of image 0?" + POST
    answers = [f"Thing{r['id'][2]}{r['id'][3]}." for r in rows]
    answers[1] = "something"
    assert task.score(records(task, samples, answers))["accuracy"].value == pytest.approx(5 / 6)


# ----------------------------------------------------------------------------- MME


def test_mme_pairs_prompt_and_scores(tmp_path):
    rows = write_mme(tmp_path, categories=("existence", "code_reasoning"), images_per_category=2)
    task = get_task("mme")
    samples = task.load(tmp_path)
    assert len(samples) == 8 and len({s.id for s in samples}) == 8
    assert [s.id for s in samples[:2]] == ["existence/existence/0.png#0", "existence/existence/0.png#1"]
    assert [s.target for s in samples[:2]] == ["yes", "no"]
    assert task.prompt(samples[0], "llava") == "Is this picture 0 of existence yes-like?" + POST
    assert np.array_equal(pixels(samples[3].load_images()[0]), pixels(rows[3]["image"]))
    # existence: image 0 both right, image 1 one right; code_reasoning: all right
    answers = ["Yes", "No", "Yes", "Yes", "yes", "no", "Yes.", "No."]
    metrics = task.score(records(task, samples, answers))
    assert list(metrics)[:2] == ["perception", "cognition"]
    assert metrics["existence/acc"].value == 0.75 and metrics["existence/acc_plus"].value == 0.5
    assert metrics["perception"].value == pytest.approx(125.0)
    assert metrics["cognition"].value == pytest.approx(200.0)


# ----------------------------------------------------------------------------- MMBench


def test_mmbench_prompt_groups_and_circular_score(tmp_path):
    rows = write_mmbench(tmp_path, n_questions=2)
    task = get_task("mmbench_en_dev")
    samples = task.load(tmp_path)
    assert [s.id for s in samples] == [str(r["index"]) for r in rows]
    assert [s.meta["group"] for s in samples] == [0, 0, 0, 1, 1, 1]
    assert samples[0].meta["options"] == {"A": "red 0", "B": "green 0", "C": "blue 0"}  # "nan" D dropped
    assert task.prompt(samples[0], "llava") == (
        "Look at the top left. Which colour is thing 0? There are several options:\nA. red 0\nB. green 0\nC. blue 0"
        "\n\nAnswer with the option's letter from the given choices directly."
    )
    assert task.prompt(samples[3], "qwen2_5_vl") == (
        "Which colour is thing 1? There are several options:\nA. red 1\nB. green 1\nC. blue 1"
        "\n\nAnswer with the option's letter from the given choices directly."
    )
    # group 0: all copies right (letter, option text, "(X)"); group 1: one copy wrong
    answers = [samples[0].target, "red 0", f"({samples[2].target})", samples[3].target, samples[4].target, "green 1"]
    metrics = task.score(records(task, samples, answers))
    assert metrics["circular_accuracy"].value == 0.5 and metrics["circular_accuracy"].n == 2
    assert metrics["accuracy"].value == pytest.approx(5 / 6)
    assert metrics["color/circular_accuracy"].value == 1.0 and metrics["shape/circular_accuracy"].value == 0.0


@pytest.mark.parametrize("name", ["refcoco_val", "pope", "gqa", "mme", "mmbench_en_dev"])
def test_every_family_gets_a_prompt_and_parses(tmp_path, name):
    write_refcoco(tmp_path), write_pope(tmp_path), write_gqa(tmp_path), write_mme(tmp_path), write_mmbench(tmp_path)
    task = get_task(name)
    sample = task.load(tmp_path, limit=1)[0]
    assert task.max_new_tokens() > 0
    for family in model_families():
        assert sample.question.strip().rstrip("?")[:10] in task.prompt(sample, family)
        assert isinstance(task.parse(sample, "Yes", family), dict)
    assert task.headline in task.score(records(task, [sample], ["Yes"]))
