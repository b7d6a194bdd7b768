"""What an evaluation does before its first sample: tasks and their samples, the model and its
processor, the routing config at a paper tier. Shared by `reroute eval`, `reroute paper-table` and
the benchmarks; every mistake a user can make here is a one-line `reroute.errors.UserError`."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reroute.errors import UserError

#: the unrouted run's name (a method choice beside the registered presets)
VANILLA = "vanilla"
#: what ``--dtype`` takes
DTYPES = ("auto", "float32", "bfloat16", "float16")


def parse_tasks(text: str) -> list[Any]:
    """The registered tasks named in ``text`` (comma-separated; lmms-eval aliases accepted)."""
    from reroute.eval.tasks import UnknownTaskError, get_task

    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UserError("--tasks is empty: name at least one task, e.g. --tasks refcoco_val,pope")
    try:
        tasks = [get_task(name) for name in names]
    except UnknownTaskError as error:
        raise UserError(str(error)) from None
    if len({task.name for task in tasks}) != len(tasks):
        raise UserError(f"--tasks names a task twice: {text}")
    return tasks


def load_samples(tasks: Sequence[Any], data_dir: str, limit: int | None) -> list[tuple[Any, list[Any]]]:
    if not Path(data_dir).is_dir():
        raise UserError(f"--data-dir {data_dir}: no such folder; point it at the folder holding the benchmark files")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    out = []
    for task in tasks:
        samples = list(task.load(data_dir, limit=limit))
        if not samples:
            raise UserError(f"task {task.name} found no samples under {data_dir}")
        out.append((task, samples))
    return out


def read_config(path: str) -> Any:
    """A RoutingConfig from a JSON object of its fields (``RoutingConfig.from_dict``)."""
    from reroute.config import RoutingConfig

    file = Path(path)
    if not file.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"--config {path} is not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path} must hold a JSON object of RoutingConfig fields")
    try:
        return RoutingConfig.from_dict(data)
    except (TypeError, ValueError) as error:
        raise UserError(f"--config {path}: {error}") from None


def resolve_dtype(name: str) -> Any:
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def load_model(model_id: str, dtype: str, device: str) -> tuple[Any, Any]:
    """The model (eval mode, on ``device``) and its processor, from a folder or the Hub."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    path = Path(model_id).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"--model {model_id}: no config.json in that folder; point --model at a saved transformers model")
    elif model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:
        raise UserError(f"--model {model_id}: no such folder (and not a Hub id like org/name)")
    try:
        AutoConfig.from_pretrained(model_id)
        model = AutoModelForImageTextToText.from_pretrained(
            model_id, dtype=resolve_dtype(dtype), attn_implementation="sdpa"
        )
        processor = AutoProcessor.from_pretrained(model_id)
    except (OSError, ValueError, KeyError) as error:
        first = " ".join(str(error).split())
        raise UserError(f"--model {model_id}: cannot load it ({first})") from None
    return model.to(device).eval(), processor


def model_num_visual(model: Any) -> int | None:
    """Visual tokens per image when the family fixes it (its adapter's ``visual_tokens_per_image``:
    LLaVA-1.5's vision grid), else None."""
    from reroute.backbones import backbone_for

    count = backbone_for(model).visual_tokens_per_image
    return None if count is None else count(model.config)


def routing_config(preset: str, tier: float | None, ratios: str, model: Any) -> Any:
    """The RoutingConfig of ``preset`` at paper tier ``tier`` for ``model`` (None for vanilla).

    Tiers are in the paper's units (of 576 visual tokens): a model with N tokens per image
    gets tier * N / 576 (as `reroute demo` does); a model whose N varies per image (Qwen)
    gets the fraction tier / 576 of each image's tokens.
    """
    import reroute
    from reroute.budgets import REFERENCE_NUM_VISUAL

    if preset == VANILLA:
        return None
    if ratios == "paper":
        return reroute.preset(preset, tier=tier, model=model, ratios="paper")
    num_visual = model_num_visual(model) or REFERENCE_NUM_VISUAL
    return reroute.preset(preset, tier=tier * num_visual / REFERENCE_NUM_VISUAL, model=model, num_visual=num_visual)


def check_routable(model: Any, config: Any, instruction_encoder: Any = None) -> None:
    """`reroute.apply`'s own checks (decision layers inside the decoder, supported model), before any sample runs."""
    import reroute

    if config is not None:
        reroute.apply(model, config, instruction_encoder=instruction_encoder).restore()


def instruction_encoder(clip: str | None, model: Any, processor: Any) -> Any:
    """CDPruner's published relevance (`reroute.methods.cdpruner.ClipRelevance`) from the CLIP checkpoint
    ``clip`` (a hub id or a local folder), on the model's device; None without one."""
    if clip is None:
        return None
    from reroute.methods.cdpruner import ClipRelevance

    try:
        encoder = ClipRelevance.from_pretrained(clip, tokenizer=getattr(processor, "tokenizer", processor))
    except OSError as error:
        raise ValueError(f"--clip {clip}: cannot load it ({str(error).splitlines()[0]})") from None
    return encoder.to(next(model.parameters()).device)


def uses_instruction_encoder(config: Any) -> bool:
    """True for a config whose vision stage reads `reroute.apply`'s ``instruction_encoder`` (CDPruner's)."""
    from reroute.methods import get_vision_stage

    return config is not None and config.vision_stage is not None and get_vision_stage(config.vision_stage).reads_prompt


# ----------------------------------------------------------------------------- resolution

#: the processor's ``size`` keys that bound an image's pixel count (transformers' Qwen-VL image
#: processors: the resize keeps ``shortest_edge <= height x width <= longest_edge``)
PIXEL_KEYS: tuple[str, str] = ("shortest_edge", "longest_edge")


def pixel_bounds(protocol: Any) -> tuple[int, int] | None:
    """(min_pixels, max_pixels) a family's `EvalProtocol` passes to its processor, or None when it
    declares none (its processor resizes to a fixed size: LLaVA-1.5, the demo)."""
    size = protocol.processor_kwargs.get("size")
    if isinstance(size, Mapping) and all(key in size for key in PIXEL_KEYS):
        return int(size[PIXEL_KEYS[0]]), int(size[PIXEL_KEYS[1]])
    return None


def with_pixel_bounds(
    protocol: Any, min_pixels: int | None, max_pixels: int | None, names: tuple[str, str] = ("--min-pixels", "--max-pixels")
) -> Any:
    """``protocol`` with its processor's pixel bounds replaced where given (None keeps the family's
    default, the paper's). A family without bounds refuses either (a one-line ValueError); ``names``
    are how the user wrote them (flags, or lmms-eval's ``min_pixels=``)."""
    if min_pixels is None and max_pixels is None:
        return protocol
    given = names[0] if min_pixels is not None else names[1]
    bounds = pixel_bounds(protocol)
    if bounds is None:
        raise ValueError(
            f"{given} does not apply to the {protocol.name} family: its protocol declares no pixel bounds for its processor; drop {given}"
        )
    low = bounds[0] if min_pixels is None else min_pixels
    high = bounds[1] if max_pixels is None else max_pixels
    if not 0 < low <= high:
        raise ValueError(f"{names[0]} {low} and {names[1]} {high}: give 0 < {names[0]} <= {names[1]}")
    size = {**protocol.processor_kwargs["size"], PIXEL_KEYS[0]: low, PIXEL_KEYS[1]: high}
    return dataclasses.replace(protocol, processor_kwargs={**protocol.processor_kwargs, "size": size})


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
