"""Referring-expression comprehension on RefCOCO, RefCOCO+ and RefCOCOg (lmms-lab files).

Each file row is one object: ``bbox`` is ``[x, y, w, h]`` in pixels of the original image and
``answer`` the list of its referring expressions. Every expression is one sample (rows are
exploded at load, so counts come from the files), asked as the model family's grounding
prompt (its protocol's ``grounding_prompt``, `reroute.backbones.evaluation`); the target is the
object's box as normalised ``[x1, y1, x2, y2]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reroute.eval.metrics.rec import is_pixel_box, normalize_box, parse_box, rec_metrics, xywh_to_xyxy_normalized
from reroute.eval.task import EvalSample, Metric
from reroute.eval.tasks.common import RowImages, check_family, check_limit, check_unique, family_protocol
from reroute.eval.tasks.files import HubDataset, HubTask

REFCOCO = HubDataset(("RefCOCO",))
REFCOCO_PLUS = HubDataset(("RefCOCOPlus", "RefCOCOplus"))  # lmms-lab-encoder spells it RefCOCOplus
REFCOCOG = HubDataset(("RefCOCOg",))


@dataclass(frozen=True)
class RecTask(HubTask):
    """One split of a RefCOCO-family dataset."""

    name: str
    dataset: HubDataset
    split: str
    family: str = "rec"
    #: the metric a summary shows first
    headline: str = "acc@0.5"

    def load(self, data_dir: str | Path, limit: int | None = None) -> list[EvalSample]:
        check_limit(limit)
        table = self.open_split(data_dir)
        rows = table.columns(["question_id", "answer", "bbox"])
        samples: list[EvalSample] = []
        for row, (question_id, expressions, bbox) in enumerate(zip(rows["question_id"], rows["answer"], rows["bbox"])):
            if limit is not None and len(samples) >= limit:
                break
            size = table.image_size(row)
            target = [float(v) for v in xywh_to_xyxy_normalized(bbox, size)]
            for k, expression in enumerate(expressions or []):
                samples.append(
                    EvalSample(
                        task=self.name,
                        id=f"{question_id}/{k}",
                        question=expression,
                        target=target,
                        meta={
                            "image_size": list(size),
                            "question_id": str(question_id),
                            "bbox_xywh": [float(v) for v in bbox],
                        },
                        load_images=RowImages(table, row),
                    )
                )
        samples = samples[:limit]
        check_unique([s.id for s in samples], self.dataset_id)
        return samples

    def prompt(self, sample: EvalSample, model_family: str) -> str:
        return family_protocol(model_family).grounding_question(sample.question)

    def max_new_tokens(self) -> int:
        return 128  # room for Qwen2.5-VL's JSON answer with its label

    def parse(
        self, sample: EvalSample, answer: str, model_family: str, frame: tuple[int, int] | None = None
    ) -> dict[str, Any]:
        """``box``: the normalised predicted box, or None when the answer holds no box.

        Pixel boxes (any value above 1) are divided by ``frame`` (width, height), or by the
        original image size when ``frame`` is None (the paper's convention, see `reroute.eval.task`).
        """
        check_family(model_family)
        raw = parse_box(answer)
        if raw is None:
            return {"box": None, "raw_box": None, "pixels": False}
        size = tuple(frame) if frame is not None else tuple(sample.meta["image_size"])
        box = normalize_box(raw, size)  # type: ignore[arg-type]
        return {"box": [float(v) for v in box], "raw_box": list(raw), "pixels": is_pixel_box(raw)}

    def score(self, records: Sequence[dict[str, Any]]) -> dict[str, Metric]:
        return rec_metrics([r["prediction"]["box"] for r in records], [r["target"] for r in records])
