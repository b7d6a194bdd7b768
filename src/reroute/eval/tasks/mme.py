"""MME (lmms-lab/MME, split ``test``): two yes/no questions per image, 14 categories."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reroute.eval.metrics.mme import mme_label, mme_metrics
from reroute.eval.task import EvalSample, Metric
from reroute.eval.tasks.common import SHORT_ANSWER_POST_PROMPT, RowImages, check_family, check_limit, check_unique, family_protocol
from reroute.eval.tasks.files import HubDataset, HubTask

MME = HubDataset(("MME",))
#: MME's own answer instruction, replaced by the short-answer post-prompt (as lmms-eval does)
MME_INSTRUCTION = " Please answer yes or no."


@dataclass(frozen=True)
class MmeTask(HubTask):
    """MME perception (10 categories) and cognition (4), scored by acc + acc+ per category."""

    name: str = "mme"
    dataset: HubDataset = MME
    split: str = "test"
    family: str = "mme"
    #: the metric a summary shows first
    headline: str = "perception"

    def load(self, data_dir: str | Path, limit: int | None = None) -> list[EvalSample]:
        check_limit(limit)
        table = self.open_split(data_dir)
        rows = table.columns(["question_id", "question", "answer", "category"])
        seen: dict[tuple[str, str], int] = {}
        samples = []
        for row in range(len(table) if limit is None else min(limit, len(table))):
            # question_id names the image; its two questions are told apart by their order in the files
            image_id, category = str(rows["question_id"][row]), rows["category"][row]
            k = seen[category, image_id] = seen.get((category, image_id), -1) + 1
            samples.append(
                EvalSample(
                    task=self.name,
                    id=f"{category}/{image_id}#{k}",
                    question=rows["question"][row].strip(),
                    target=rows["answer"][row].strip().lower().replace(".", ""),
                    meta={"category": category, "image_id": image_id},
                    load_images=RowImages(table, row),
                )
            )
        check_unique([s.id for s in samples], self.dataset_id)
        return samples

    def prompt(self, sample: EvalSample, model_family: str) -> str:
        post_prompt = family_protocol(model_family).post_prompt(SHORT_ANSWER_POST_PROMPT)
        return sample.question.replace(MME_INSTRUCTION, "") + post_prompt

    def max_new_tokens(self) -> int:
        return 16  # lmms-eval's MME setting

    def parse(
        self, sample: EvalSample, answer: str, model_family: str, frame: tuple[int, int] | None = None
    ) -> dict[str, Any]:
        """``label``: "yes", "no" or "other", read as lmms-eval reads MME answers."""
        check_family(model_family)
        return {"label": mme_label(answer)}

    def score(self, records: Sequence[dict[str, Any]]) -> dict[str, Metric]:
        return mme_metrics(
            [r["meta"]["category"] for r in records],
            [r["meta"]["image_id"] for r in records],
            [r["prediction"]["label"] == r["target"] for r in records],
        )
