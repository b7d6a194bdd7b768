"""Referring-expression comprehension on RefCOCO, RefCOCO+ and RefCOCOg (lmms-lab files).

Each file row is one object: ``bbox`` is ``[x, y, w, h]`` in pixels of the original image and
``answer`` the list of its referring expressions. Every expression is one sample (rows are
exploded at load, so counts come from the files), asked as the model family's grounding
prompt (its protocol's ``grounding_prompt``, `reroute.backbones.evaluation`); the target is the
object's box as normalised ``[x1, y1, x2, y2]``.

Answers are read twice (docs/semantics.md §9): the headline metrics read them as the paper's
harness does with the family's declared box parser and format; the ``careful/`` metrics with
reroute's own reading (permissive parsing, boxes clipped to the image, the pixel heuristic, the
frame chosen by ``--rec-frame``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reroute.eval.metrics.rec import (
    harness_normalize,
    harness_parse,
    harness_rec_metrics,
    is_pixel_box,
    normalize_box,
    parse_box,
    rec_metrics,
    xywh_to_xyxy_normalized,
)
from reroute.eval.task import EvalSample, Metric
from reroute.eval.tasks.common import (
    CAREFUL,
    RowImages,
    check_limit,
    check_unique,
    family_protocol,
)
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
        """``box``: the predicted box as the paper's harness reads it for this family (the protocol's
        ``box_parser`` and ``box_format``, pixels divided by the original image size), None when it
        finds none; ``raw_box``: the numbers it found.

        ``careful_box``: reroute's careful reading, None when unparsed: any ``[a, b, c, d]`` or
        ``(a, b, c, d)``; a "per_mille" family's box divided by 1000; otherwise a box with any value
        above 1 (``careful_pixels``) divided by ``frame`` (width, height), or by the original image
        size when ``frame`` is None.
        """
        protocol = family_protocol(model_family)
        image_size = tuple(sample.meta["image_size"])
        raw = harness_parse(answer, protocol.box_parser)
        box = None if raw is None else harness_normalize(raw, protocol.box_format, image_size)  # type: ignore[arg-type]
        careful_raw = parse_box(answer)
        if careful_raw is None:
            careful = None
        elif protocol.box_format == "per_mille":
            careful = tuple(v / 1000 for v in careful_raw)
        else:
            careful = normalize_box(careful_raw, tuple(frame) if frame is not None else image_size)  # type: ignore[arg-type]
        return {
            "box": None if box is None else [float(v) for v in box],
            "raw_box": None if raw is None else list(raw),
            "careful_box": None if careful is None else [float(v) for v in careful],
            "careful_pixels": careful_raw is not None and protocol.box_format != "per_mille" and is_pixel_box(careful_raw),
        }

    def score(self, records: Sequence[dict[str, Any]]) -> dict[str, Metric]:
        """The headline (the paper's harness, `harness_rec_metrics`), then ``careful/<metric>`` (`rec_metrics`)."""
        targets = [r["target"] for r in records]
        headline = harness_rec_metrics([r["prediction"]["box"] for r in records], targets)
        careful = rec_metrics([r["prediction"]["careful_box"] for r in records], targets)
        return headline | {CAREFUL + name: metric for name, metric in careful.items()}
