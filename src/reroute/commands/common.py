"""What the `show` and `analyze` commands share: configs from JSON files, boxes from the command line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from reroute.config import RoutingConfig
from reroute.errors import UserError


def config_file_pair(path: str) -> dict[str, RoutingConfig]:
    """A `RoutingConfig` from a JSON file (its field names as keys) and the same schedule under the
    other action (same per-layer counts, so the same budget), when that action allows it."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--config {path}: no such file; give a JSON file with RoutingConfig fields")
    try:
        fields = json.loads(file.read_text())
        config = RoutingConfig(**fields)
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise UserError(f"--config {path}: {str(error).splitlines()[0]}") from None
    other = "remove" if config.action == "reroute" else "reroute"
    try:
        twin = dataclasses.replace(config, action=other, execution="stagewise")
    except ValueError:  # ratios that grow cannot run under remove
        return {f"{config.action} (config)": config}
    both = {f"{config.action} (config)": config, f"{other} (same schedule)": twin}
    return dict(sorted(both.items(), key=lambda item: item[1].action != "remove"))


def parse_box(text: str | None) -> tuple[float, float, float, float] | None:
    """``"x1,y1,x2,y2"`` -> a tuple (one-line error when malformed)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or values[2] <= values[0] or values[3] <= values[1]:
        raise UserError(f"--box {text!r}: give x1,y1,x2,y2 with x2 > x1 and y2 > y1 (pixels, or 0-1 fractions)")
    return values  # type: ignore[return-value]


def load_vlm(model_id: str | None):
    """A VLM and its processor from a Hub id or folder (default: the bundled demo model), in eval
    mode: float32 on CPU, the checkpoint's dtype on a GPU. One-line error when it cannot load."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from reroute.demo.modeling import MODEL_DIR

    path = model_id or str(MODEL_DIR)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32 if device == "cpu" else "auto")
        processor = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise UserError(f"--model {path}: cannot load it ({str(error).splitlines()[0]})") from None
    return model.to(device).eval(), processor


def check_paper_tier(ratios: str, tier: float) -> None:
    """``--ratios paper`` exists only at the paper's tiers: refuse any other before a model loads."""
    from reroute.budgets import PAPER_TIERS

    if ratios == "paper" and tier not in PAPER_TIERS:
        tiers = ", ".join(str(t) for t in PAPER_TIERS)
        raise UserError(f"--ratios paper has published ratios for tiers {tiers} only, got --tier {tier:g}; use --ratios solved")
