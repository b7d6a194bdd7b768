"""MMBench English dev (lmms-lab/MMBench, config ``en``, split ``dev``), with circular evaluation.

The prompt is lmms-eval's: the hint (when there is one), the question, "There are several
options:" and one ``"A. ..."`` line per option, then a newline and the post-prompt, which itself
starts with one (a blank line before the instruction, as lmms-eval's ``f"{query}\n{post_prompt}"``).
Answers are read without any API: the headline as lmms-eval's API-free scoring reads them
(`reroute.eval.metrics.mmbench.lmms_choice`), ``careful/`` metrics by reroute's
`reroute.eval.metrics.mmbench.extract_choice`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reroute.eval.metrics.mmbench import (
    LETTERS,
    circular_group,
    extract_choice,
    lmms_choice,
    lmms_options,
    mmbench_metrics,
)
from reroute.eval.task import EvalSample, Metric
from reroute.eval.tasks.common import (
    CAREFUL,
    RowImages,
    check_family,
    check_limit,
    check_unique,
)
from reroute.eval.tasks.files import HubDataset, HubTask

MMBENCH = HubDataset(("MMBench",))
CONFIG = "en"
OPTIONS_HEADER = "There are several options:"
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."


def _present(value: Any) -> bool:
    """Whether a hint/option cell holds text (the files use None, NaN or the string "nan" for none)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return str(value).strip() not in ("", "nan")


@dataclass(frozen=True)
class MmbenchTask(HubTask):
    """MMBench-EN dev: every row (rotated copies included) is a sample; groups are scored circularly."""

    name: str = "mmbench_en_dev"
    dataset: HubDataset = MMBENCH
    split: str = "dev"
    family: str = "mmbench"
    #: the metric a summary shows first
    headline: str = "circular_accuracy"

    def load(self, data_dir: str | Path, limit: int | None = None) -> list[EvalSample]:
        check_limit(limit)
        table = self.open_split(data_dir, CONFIG)
        names = ["index", "question", "hint", "answer", "category", *(c for c in "ABCD")]
        optional = [c for c in ("E", "L2-category", "l2-category") if c in table.column_names()]
        rows = table.columns(names + optional)
        samples = []
        for row in range(len(table) if limit is None else min(limit, len(table))):
            index = int(rows["index"][row])
            options = {c: str(rows[c][row]) for c in LETTERS if c in rows and _present(rows[c][row])}
            hint = rows["hint"][row]
            l2 = rows.get("L2-category", rows.get("l2-category", [None] * len(table)))[row]
            samples.append(
                EvalSample(
                    task=self.name,
                    id=str(index),
                    question=rows["question"][row],
                    target=rows["answer"][row],
                    meta={
                        "index": index,
                        "group": circular_group(index),
                        "options": options,
                        # the options lmms-eval's reader knows (A-D, a "nan" text kept)
                        "lmms_options": lmms_options({c: rows[c][row] for c in "ABCD"}),
                        "hint": str(hint) if _present(hint) else None,
                        "category": rows["category"][row],
                        "l2_category": l2,
                    },
                    load_images=RowImages(table, row),
                )
            )
        check_unique([s.id for s in samples], self.dataset_id)
        return samples

    def prompt(self, sample: EvalSample, model_family: str) -> str:
        check_family(model_family)
        options = "\n".join([OPTIONS_HEADER, *(f"{k}. {v}" for k, v in sorted(sample.meta["options"].items()))])
        parts = [sample.meta["hint"], sample.question, options] if sample.meta["hint"] else [sample.question, options]
        return " ".join(parts) + "\n" + POST_PROMPT

    def max_new_tokens(self) -> int:
        return 1024  # lmms-eval's MMBench setting; greedy answers stop at the end-of-sequence token

    def parse(
        self, sample: EvalSample, answer: str, model_family: str, frame: tuple[int, int] | None = None
    ) -> dict[str, Any]:
        """``choice``: the option letter lmms-eval's API-free scoring reads from the answer, or None;
        ``careful_choice``: the letter `extract_choice` reads, or None."""
        check_family(model_family)
        return {
            "choice": lmms_choice(answer, sample.meta["lmms_options"]),
            "careful_choice": extract_choice(answer, sample.meta["options"]),
        }

    def score(self, records: Sequence[dict[str, Any]]) -> dict[str, Metric]:
        """The headline (lmms-eval's reading), then ``careful/<metric>`` (`extract_choice`)."""
        indices = [r["meta"]["index"] for r in records]
        categories = [r["meta"]["category"] for r in records]

        def right(key: str) -> list[bool]:
            return [r["prediction"][key] is not None and r["prediction"][key] == r["target"] for r in records]

        headline = mmbench_metrics(indices, right("choice"), categories)
        careful = mmbench_metrics(indices, right("careful_choice"), categories)
        return headline | {CAREFUL + name: metric for name, metric in careful.items()}

