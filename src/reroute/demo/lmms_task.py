"""A tiny local lmms-eval task on the bundled demo's synthetic scenes (grounding and VQA).

``write_task(directory)`` writes ``reroute_demo.yaml`` and ``reroute_demo.parquet`` (the first
samples of the held-out set `reroute demo` evaluates); then

    lmms-eval --model reroute_llava_hf --model_args pretrained=<demo model dir>,preset=reroute_vs_fastv,tier=128 \\
        --tasks reroute_demo --include_path <directory> --device cpu

The yaml's functions live here (lmms-eval imports them by module path), and they score exactly
as the demo does: grounding is correct at IoU >= 0.5, VQA by exact match after normalisation.
Writing the parquet needs ``datasets`` (lmms-eval's dependency); the rest of this module does not.

Also a command: ``python -m reroute.demo.lmms_task DIRECTORY [--num-samples N]``.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

from PIL import Image

from reroute.demo import synthetic

TASK_NAME = "reroute_demo"
#: the held-out stream `reroute demo` evaluates (reroute.demo.run.EVAL_SEED / EVAL_SPLIT)
SEED, SPLIT = 2026, "test"
#: the demo's own generation length (reroute.demo.evaluation.generate_answers)
MAX_NEW_TOKENS = 12

_YAML = f"""\
# Written by reroute.demo.lmms_task: {{num_samples}} samples of the bundled demo's held-out set.
task: {TASK_NAME}
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {TASK_NAME}.parquet
test_split: test
output_type: generate_until
doc_to_visual: !function reroute.demo.lmms_task.doc_to_visual
doc_to_text: !function reroute.demo.lmms_task.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {MAX_NEW_TOKENS}
  temperature: 0
  do_sample: false
process_results: !function reroute.demo.lmms_task.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
"""


def samples(num_samples: int) -> list[synthetic.Sample]:
    """The task's samples: the first ``num_samples`` of the demo's held-out set."""
    return synthetic.make_dataset(num_samples, seed=SEED, split=SPLIT)


def doc_of(sample: synthetic.Sample, index: int) -> dict[str, Any]:
    """One row of the task's table (the image as PNG bytes, as a ``datasets`` Image column stores it)."""
    buffer = io.BytesIO()
    sample.image.save(buffer, format="PNG")
    return {
        "index": index,
        "image": {"bytes": buffer.getvalue(), "path": None},
        "question": sample.question,
        "answer": sample.answer,
        "kind": sample.kind,
        "subtype": sample.subtype,
    }


def write_task(directory: str | Path, num_samples: int = 8) -> Path:
    """Write the task's yaml and parquet into ``directory`` (created if needed); returns the yaml's path."""
    import datasets

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rows = [doc_of(s, i) for i, s in enumerate(samples(num_samples))]
    features = datasets.Features(
        {
            "index": datasets.Value("int64"),
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "kind": datasets.Value("string"),
            "subtype": datasets.Value("string"),
        }
    )
    table = datasets.Dataset.from_list(rows, features=features)
    table.to_parquet(str(out / f"{TASK_NAME}.parquet"))
    yaml_path = out / f"{TASK_NAME}.yaml"
    yaml_path.write_text(_YAML.format(num_samples=num_samples))
    return yaml_path


# ----------------------------------------------------------------------------- the yaml's functions


def doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The question alone: the model's chat template wraps it (the demo's: ``USER: <image>\\n... ASSISTANT:``)."""
    return doc["question"]


def is_correct(doc: dict[str, Any], prediction: str) -> bool:
    """The demo's scoring: grounding at IoU >= 0.5 against the answer's box, VQA by normalised exact match."""
    if doc["kind"] == "grounding":
        return synthetic.grounding_correct(prediction, synthetic.parse_box(doc["answer"]))
    return synthetic.vqa_correct(prediction, doc["answer"])


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"accuracy": float(is_correct(doc, results[0]))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m reroute.demo.lmms_task", description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="where to write reroute_demo.yaml and reroute_demo.parquet")
    parser.add_argument("--num-samples", type=int, default=8)
    args = parser.parse_args(argv)
    print(write_task(args.directory, args.num_samples))


if __name__ == "__main__":
    main()
