"""`reroute eval` end to end on a tiny model of every newer family (LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL,
Qwen3-VL, InternVL), on fixtures in the benchmarks' real on-disk layouts.

The command line runs as a user runs it; only the model loading is replaced (the tiny models and their
processors are built here: the families' video processors need torchvision, absent in the test
environment, so `AutoProcessor` cannot load them). LLaVA-1.5, Qwen2.5-VL and the demo run in
test_eval_runner.py and tests/commands/test_eval_cli.py.
"""

from __future__ import annotations

import json

import pytest

from reroute.cli import main
from reroute.eval import setup as eval_setup
from reroute.eval.families import Family
from reroute.eval.records import read_records
from reroute.eval.tasks import get_task
from tests.helpers.eval_fixtures import (
    write_gqa,
    write_mmbench,
    write_mme,
    write_pope,
    write_refcoco,
)
from tests.helpers.eval_processors import (
    IMAGE,
    tiny_internvl_processor,
    tiny_llava_next_processor,
    tiny_qwen_vl_processor,
)
from tests.helpers.models import tiny_qwen
from tests.helpers.models_more import tiny_internvl, tiny_llava_next, tiny_qwen3_vl

TASKS = ("refcoco_val", "pope", "gqa", "mme", "mmbench_en_dev")

#: model name -> (its evaluation family, model builder, processor builder, extra flags)
MODELS = {
    "llava_next": ("llava_next", lambda: tiny_llava_next("llava_next", num_layers=6),
                   lambda: tiny_llava_next_processor("llava_next"), ()),
    "llava_onevision": ("llava_next", lambda: tiny_llava_next("llava_onevision", num_layers=6),
                        lambda: tiny_llava_next_processor("llava_onevision"), ()),
    # the tiny 4-px patches: the family's default bounds (the paper's, for 14-px patches) would give thousands
    "qwen2_vl": ("qwen2_vl", lambda: tiny_qwen("qwen2_vl", num_layers=6), lambda: tiny_qwen_vl_processor("qwen2_vl"),
                 ("--min-pixels", "64", "--max-pixels", "1024")),
    "qwen3_vl": ("qwen3_vl", lambda: tiny_qwen3_vl(num_layers=6), lambda: tiny_qwen_vl_processor("qwen3_vl"),
                 ("--min-pixels", "64", "--max-pixels", "1024")),
    "internvl": ("internvl", lambda: tiny_internvl(num_layers=6), tiny_internvl_processor, ()),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    write_refcoco(path, n_objects=2)
    write_pope(path, per_category=1)
    write_gqa(path, n_images=1)
    write_mme(path, categories=("existence",), images_per_category=1)
    write_mmbench(path, n_questions=1)
    return path


@pytest.mark.parametrize("name", list(MODELS))
def test_reroute_eval_runs_every_newer_family(name, data_dir, tmp_path, monkeypatch, capsys):
    family, build_model, build_processor, flags = MODELS[name]
    model, processor = build_model(), build_processor()
    monkeypatch.setattr(eval_setup, "load_model", lambda *args: (model, processor))
    out = tmp_path / "out"
    args = ["eval", "--model", f"tiny-{name}", "--data-dir", str(data_dir), "--output", str(out), "--no-progress",
            "--tasks", ",".join(TASKS), "--limit", "2", "--preset", "fastv", "--tier", "192", "--batch-size", "2",
            *flags]
    assert main(args) == 0, capsys.readouterr().err
    run_dir = out / "fastv-192-solved"
    run = json.loads((run_dir / "run.json").read_text())
    assert run["family"] == family  # detected from the model's adapter
    assert run["protocol"]["family"] == family
    summary = json.loads((run_dir / "summary.json").read_text())
    assert sorted(summary["tasks"]) == sorted(TASKS)
    protocol = Family(family).protocol
    if flags:  # the run's pixel bounds (Qwen2-VL, Qwen3-VL), as run.json states them
        assert (run["min_pixels"], run["max_pixels"]) == (64, 1024)
        protocol = eval_setup.with_pixel_bounds(protocol, 64, 1024)
    for task_name in TASKS:
        task = get_task(task_name)
        samples = {s.id: s for s in task.load(data_dir, limit=2)}
        records = read_records(run_dir / f"{task_name}.jsonl")
        assert [r["id"] for r in records] == list(samples)
        for record in records:
            sample = samples[record["id"]]
            # the family's chat template around the task's question, one image first
            assert record["prompt"] == protocol.prompt(processor, task.prompt(sample, family), 1)
            # every placeholder the processor wrote is one candidate visual token
            encoded = protocol.encode(processor, [record["prompt"]], [sample.load_images()])
            assert record["num_visual"] == int((encoded.inputs["input_ids"] == IMAGE).sum())
            assert record["visual_per_layer"][0] == record["num_visual"]
            assert min(record["visual_per_layer"]) < record["num_visual"]  # FastV pruned
    # the conversation as each checkpoint's template writes it, by hand
    before, after = TURNS[name]
    (sample,) = get_task("pope").load(data_dir, limit=1)
    question = sample.question + "\nAnswer the question using a single word or phrase."
    assert read_records(run_dir / "pope.jsonl")[0]["prompt"] == before + question + after


QWEN_TURN = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>", "<|im_end|>\n<|im_start|>assistant\n")
#: model name -> the text before and after the user text of a one-image turn
TURNS = {
    "llava_next": ("USER: <image>\n", " ASSISTANT:"),
    "llava_onevision": ("<|im_start|>user\n<image>\n", "<|im_end|>\n<|im_start|>assistant\n"),
    "qwen2_vl": QWEN_TURN,
    "qwen3_vl": QWEN_TURN,
    "internvl": ("<|im_start|>user\n<IMG_CONTEXT>\n", "<|im_end|>\n<|im_start|>assistant\n"),
}
