"""Referring-expression comprehension (RefCOCO, RefCOCO+, RefCOCOg): box parsing, IoU, accuracies.

Boxes are ``[x1, y1, x2, y2]``, normalised to the image (0..1). Two readings of an answer
(docs/semantics.md §9):

The headline: the paper's harness (its patched lmms-eval 0.7.1), per family. `harness_parse` finds
the first ``[a, b, c, d]`` (lmms-eval's pattern: integers or decimals, spaces only after the
commas), else the first ``(a, b, c, d)``; an unparsed answer is the box ``[0, 0, 0, 0]``.
`harness_normalize` converts it by the family's box format only when some value is above 1
("pixels": divided by the original image's width and height; "per_mille": by 1000;
"normalized": kept as it is). `harness_iou` and `harness_center` are lmms-eval's: no clipping.

The careful reading (`careful/...` metrics, `rec_metrics`), reroute's own:

- parsing: the first ``[a, b, c, d]`` of four numbers in the answer, else the first
  ``(a, b, c, d)``; nothing found means the answer is unparsed and scores as the box
  ``[0, 0, 0, 0]`` (IoU 0, centre wrong). Qwen2.5-VL's JSON (``{"bbox_2d": [...]}``) parses
  through the same rule.
- pixels: if any parsed value is above 1 the box is in pixels and is divided by the frame's
  width and height (the original image unless the caller gives the frame the model saw).
- IoU: both boxes are clipped to the image ([0, 1]) first; a box with no area after
  clipping (zero width, inverted corners, entirely outside) has IoU 0 with everything.
- centre accuracy: the centre of the clipped predicted box lies inside the ground-truth box
  (borders included); unparsed answers are wrong.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from reroute.eval.metrics.intervals import mean_interval, proportion
from reroute.eval.task import Metric

Box = tuple[float, float, float, float]

#: IoU thresholds reported as ``acc@t`` (``acc@0.5`` is the paper's metric)
IOU_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
UNPARSED_BOX: Box = (0.0, 0.0, 0.0, 0.0)

_NUMBER = r"(-?\d+(?:\.\d+)?|-?\.\d+)"
_SEP = r"\s*,\s*"
_SQUARE = re.compile(r"\[\s*" + _SEP.join([_NUMBER] * 4) + r"\s*\]")
_ROUND = re.compile(r"\(\s*" + _SEP.join([_NUMBER] * 4) + r"\s*\)")


# ----------------------------------------------------------------------------- the paper's harness

_HARNESS_NUMBER = r"(-?\d+(?:\.\d+)?)"
_HARNESS_SQUARE = re.compile(r"\[\s*" + r",\s*".join([_HARNESS_NUMBER] * 4) + r"\s*\]")
_HARNESS_ROUND = re.compile(r"\(\s*" + r",\s*".join([_HARNESS_NUMBER] * 4) + r"\s*\)")
#: InternVL's RefCOCO pattern (OpenGVLab/InternVL internvl_chat/eval/refcoco/evaluate_grounding.py): the
#: four comma-separated pieces of the first "[...]" (or "[[...]]"), whatever they hold
_INTERNVL = re.compile(r"\[*\[(.*?),(.*?),(.*?),(.*?)\]\]*")
#: the box patterns each parser tries, in order (`reroute.backbones.evaluation.BOX_PARSERS`)
_HARNESS_PATTERNS = {
    "bracketed": (_HARNESS_SQUARE, _HARNESS_ROUND),
    "square": (_HARNESS_SQUARE,),
    "internvl": (_INTERNVL,),
}


def internvl_parse(answer: str) -> Box | None:
    """The box InternVL's own RefCOCO evaluation reads from ``answer`` (``<box>[[x1, y1, x2, y2]]</box>``):
    the four pieces of its pattern's first match as Python floats, None where there is no match or a piece
    is no number (InternVL scores both as the box ``[0, 0, 0, 0]``, as the harness scores None)."""
    return harness_parse(answer, "internvl")


def harness_parse(answer: str, parser: str = "bracketed") -> Box | None:
    """The box the harness's ``parser`` finds in ``answer`` ("bracketed": square, else round brackets;
    "square": square only; "internvl": InternVL's pattern), or None: the first pattern that matches
    gives the four values, and a value that is no number (only InternVL's pattern admits one) gives None."""
    if parser not in _HARNESS_PATTERNS:
        raise ValueError(f"unknown box parser {parser!r}; expected one of {', '.join(_HARNESS_PATTERNS)}")
    for pattern in _HARNESS_PATTERNS[parser]:
        match = pattern.search(answer or "")
        if match:
            try:
                return tuple(float(v) for v in match.groups())  # type: ignore[return-value]
            except ValueError:
                return None
    return None


def harness_normalize(box: Sequence[float], box_format: str, image_size: tuple[int, int]) -> Box:
    """``box`` in 0..1 units as the paper's harness converts it: only when some value is above 1,
    "pixels" divides by ``image_size = (width, height)`` of the original image, "per_mille" by 1000;
    "normalized" (and every box with all values at most 1) is kept as it is."""
    values = tuple(float(v) for v in box)
    if not any(v > 1 for v in values):
        return values  # type: ignore[return-value]
    if box_format == "pixels":
        w, h = image_size
        if w > 0 and h > 0:
            return (values[0] / w, values[1] / h, values[2] / w, values[3] / h)
        return values  # type: ignore[return-value]
    if box_format == "per_mille":
        return tuple(v / 1000 for v in values)  # type: ignore[return-value]
    if box_format == "normalized":
        return values  # type: ignore[return-value]
    raise ValueError(f"unknown box format {box_format!r}; expected normalized, pixels or per_mille")


def harness_iou(pred: Sequence[float], gt: Sequence[float]) -> float:
    """lmms-eval's IoU: no clipping, signed areas; 0 where its union is 0 (where lmms-eval divides by zero)."""
    inter = max(0.0, min(pred[2], gt[2]) - max(pred[0], gt[0])) * max(0.0, min(pred[3], gt[3]) - max(pred[1], gt[1]))
    union = (pred[2] - pred[0]) * (pred[3] - pred[1]) + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter
    return inter / union if union != 0 else 0.0


def harness_center(pred: Sequence[float], gt: Sequence[float]) -> bool:
    """lmms-eval's centre accuracy: the centre of the unclipped ``pred`` lies in ``gt`` (borders included)."""
    cx, cy = (pred[0] + pred[2]) / 2, (pred[1] + pred[3]) / 2
    return gt[0] <= cx <= gt[2] and gt[1] <= cy <= gt[3]


def harness_rec_metrics(
    predictions: Sequence[Sequence[float] | None], targets: Sequence[Sequence[float]]
) -> dict[str, Metric]:
    """The headline: acc@t, mean IoU and centre accuracy as the paper's harness computes them, and the parsed
    fraction. ``predictions``: `harness_normalize`d boxes, or None for an unparsed answer (scored as
    ``[0, 0, 0, 0]``, as lmms-eval does)."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    boxes = [UNPARSED_BOX if p is None else p for p in predictions]
    ious = [harness_iou(p, t) for p, t in zip(boxes, targets)]
    metrics = {f"acc@{t}": proportion([v >= t for v in ious]) for t in IOU_THRESHOLDS}
    metrics["miou"] = mean_interval(ious)
    metrics["center_acc"] = proportion([harness_center(p, t) for p, t in zip(boxes, targets)])
    metrics["parsed"] = proportion([p is not None for p in predictions])
    return metrics


# ----------------------------------------------------------------------------- the careful reading


def parse_box(answer: str) -> Box | None:
    """The first ``[a, b, c, d]`` in ``answer``, else the first ``(a, b, c, d)``, else None."""
    for pattern in (_SQUARE, _ROUND):
        match = pattern.search(answer or "")
        if match:
            return tuple(float(v) for v in match.groups())  # type: ignore[return-value]
    return None


def is_pixel_box(box: Sequence[float]) -> bool:
    """A box with any coordinate above 1 is taken to be in pixels."""
    return any(v > 1 for v in box)


def normalize_box(box: Sequence[float], frame: tuple[int, int]) -> Box:
    """``box`` in 0..1 units: pixel boxes are divided by ``frame = (width, height)``, others kept."""
    if not is_pixel_box(box):
        return tuple(float(v) for v in box)  # type: ignore[return-value]
    w, h = frame
    if w <= 0 or h <= 0:
        raise ValueError(f"frame must have a positive width and height, got {frame}")
    x1, y1, x2, y2 = box
    return (x1 / w, y1 / h, x2 / w, y2 / h)


def xywh_to_xyxy_normalized(bbox: Sequence[float], size: tuple[int, int]) -> Box:
    """A COCO ``[x, y, w, h]`` pixel box as normalised ``[x1, y1, x2, y2]`` of an image of ``size = (W, H)``."""
    x, y, w, h = bbox
    width, height = size
    return (x / width, y / height, (x + w) / width, (y + h) / height)


def clip_box(box: Sequence[float]) -> Box:
    """``box`` with every coordinate clipped to [0, 1]."""
    return tuple(min(1.0, max(0.0, float(v))) for v in box)  # type: ignore[return-value]


def box_area(box: Sequence[float]) -> float:
    """Area of ``[x1, y1, x2, y2]``; zero when the corners are inverted."""
    x1, y1, x2, y2 = box
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def iou(pred: Sequence[float], gt: Sequence[float]) -> float:
    """Intersection over union of the two boxes after clipping both to [0, 1]; 0 when either has no area."""
    a, b = clip_box(pred), clip_box(gt)
    area_a, area_b = box_area(a), box_area(b)
    if area_a == 0 or area_b == 0:
        return 0.0
    inter = box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    return inter / (area_a + area_b - inter)


def center_inside(pred: Sequence[float], gt: Sequence[float]) -> bool:
    """Whether the centre of the clipped ``pred`` lies in ``gt`` (borders included)."""
    x1, y1, x2, y2 = clip_box(pred)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return gt[0] <= cx <= gt[2] and gt[1] <= cy <= gt[3]


def rec_metrics(predictions: Sequence[Sequence[float] | None], targets: Sequence[Sequence[float]]) -> dict[str, Metric]:
    """Acc@t for each of `IOU_THRESHOLDS`, mean IoU, centre accuracy and the parsed fraction.

    ``predictions``: normalised boxes, or None for an unparsed answer; ``targets``: the
    normalised ground-truth boxes, one per expression.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    ious = [iou(p, t) if p is not None else 0.0 for p, t in zip(predictions, targets)]
    metrics = {f"acc@{t}": proportion([v >= t for v in ious]) for t in IOU_THRESHOLDS}
    metrics["miou"] = mean_interval(ious)
    metrics["center_acc"] = proportion([p is not None and center_inside(p, t) for p, t in zip(predictions, targets)])
    metrics["parsed"] = proportion([p is not None for p in predictions])
    return metrics
