"""POPE (lmms-lab/POPE, split ``test``): yes/no object-existence questions in three categories."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reroute.eval.metrics.pope import pope_metrics, whole_answer_label, yes_no_label
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
from reroute.eval.tasks.files import HubDataset, HubTask

POPE = HubDataset(("POPE",))


@dataclass(frozen=True)
class PopeTask(HubTask):
    """Every POPE question the files hold (9,000 in lmms-lab/POPE); metrics pooled and per category."""

    name: str = "pope"
    dataset: HubDataset = POPE
    split: str = "test"
    family: str = "pope"
    #: the metric a summary shows first
    headline: str = "f1"

    def load(self, data_dir: str | Path, limit: int | None = None) -> list[EvalSample]:
        check_limit(limit)
        table = self.open_split(data_dir)
        rows = table.columns(["question_id", "question", "answer", "category", "image_source"])
        samples = []
        for row in range(len(table) if limit is None else min(limit, len(table))):
            category = rows["category"][row]
            samples.append(
                EvalSample(
                    task=self.name,
                    # question ids restart in every category of the original POPE files
                    id=f"{category}/{rows['question_id'][row]}",
                    question=rows["question"][row].strip(),
                    target=rows["answer"][row].strip().lower(),
                    meta={"category": category, "image_source": rows["image_source"][row]},
                    load_images=RowImages(table, row),
                )
            )
        check_unique([s.id for s in samples], self.dataset_id)
        return samples

    def prompt(self, sample: EvalSample, model_family: str) -> str:
        return sample.question + family_protocol(model_family).post_prompt(SHORT_ANSWER_POST_PROMPT)

    def max_new_tokens(self) -> int:
        return 128  # lmms-eval's POPE setting

    def parse(
        self, sample: EvalSample, answer: str, model_family: str, frame: tuple[int, int] | None = None
    ) -> dict[str, Any]:
        """``label``: "yes", "no" or "other", the whole answer lower-cased and stripped (lmms-eval's reading);
        ``first_word_label``: the same from the first word, punctuation dropped (the careful reading)."""
        check_family(model_family)
        return {"label": whole_answer_label(answer), "first_word_label": yes_no_label(answer)}

    def score(self, records: Sequence[dict[str, Any]]) -> dict[str, Metric]:
        """The headline (lmms-eval's whole-answer labels and recall), then ``careful/<metric>`` (first word)."""
        targets = [r["target"] for r in records]
        categories = [r["meta"]["category"] for r in records]
        headline = pope_metrics([r["prediction"]["label"] for r in records], targets, categories, recall_misses="no")
        careful = pope_metrics([r["prediction"]["first_word_label"] for r in records], targets, categories)
        return headline | {CAREFUL + name: metric for name, metric in careful.items()}
