"""GQA testdev-balanced (lmms-lab/GQA): questions from one config, images from another, joined by image id."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reroute.eval.metrics.gqa import gqa_metrics, normalize_answer
from reroute.eval.task import EvalSample, Metric
from reroute.eval.tasks.common import (
    CAREFUL,
    SHORT_ANSWER_POST_PROMPT,
    RowImages,
    check_family,
    check_limit,
    check_unique,
    family_protocol,
)
from reroute.eval.tasks.files import DatasetFormatError, HubDataset, HubTask

GQA = HubDataset(("GQA",))
QUESTIONS_CONFIG = "testdev_balanced_instructions"
IMAGES_CONFIG = "testdev_balanced_images"


@dataclass(frozen=True)
class GqaTask(HubTask):
    """GQA's balanced test-dev questions, answered in a word or phrase and scored by exact match."""

    name: str = "gqa"
    dataset: HubDataset = GQA
    split: str = "testdev"
    family: str = "gqa"
    #: the metric a summary shows first
    headline: str = "accuracy"

    def load(self, data_dir: str | Path, limit: int | None = None) -> list[EvalSample]:
        check_limit(limit)
        questions = self.open_split(data_dir, QUESTIONS_CONFIG)
        images = self.open_split(data_dir, IMAGES_CONFIG)
        rows = questions.columns(["id", "imageId", "question", "answer"])
        image_row = {image_id: row for row, image_id in enumerate(images.columns(["id"])["id"])}
        samples = []
        for row in range(len(questions) if limit is None else min(limit, len(questions))):
            image_id = rows["imageId"][row]
            if image_id not in image_row:
                raise DatasetFormatError(
                    f"{self.dataset_id}: image {image_id!r} of question {rows['id'][row]!r} is not in the "
                    f"{IMAGES_CONFIG} files; download that config's '{self.split}' split too"
                )
            samples.append(
                EvalSample(
                    task=self.name,
                    id=str(rows["id"][row]),
                    question=rows["question"][row],
                    target=rows["answer"][row],
                    meta={"image_id": image_id},
                    load_images=RowImages(images, image_row[image_id]),
                )
            )
        check_unique([s.id for s in samples], self.dataset_id)
        return samples

    def prompt(self, sample: EvalSample, model_family: str) -> str:
        return sample.question + family_protocol(model_family).post_prompt(SHORT_ANSWER_POST_PROMPT)

    def max_new_tokens(self) -> int:
        return 16  # lmms-eval's GQA setting

    def parse(
        self, sample: EvalSample, answer: str, model_family: str, frame: tuple[int, int] | None = None
    ) -> dict[str, Any]:
        """``raw``: the answer as decoded (lmms-eval's headline reading strips it, then lower-cases and deletes
        punctuation); ``answer``: lower-cased, punctuation deleted, stripped (the careful reading)."""
        check_family(model_family)
        return {"raw": answer, "answer": normalize_answer(answer)}

    def score(self, records: Sequence[dict[str, Any]]) -> dict[str, Metric]:
        """``accuracy`` as lmms-eval scores it, then ``careful/accuracy``."""
        targets = [r["target"] for r in records]
        headline = gqa_metrics([r["prediction"]["raw"] for r in records], targets, lmms=True)
        careful = gqa_metrics([r["prediction"]["answer"] for r in records], targets)
        return headline | {CAREFUL + name: metric for name, metric in careful.items()}
