"""What several commands share: configs from JSON files and boxes (`show`, `analyze`), the paper-tier
check, the processor's pixel bounds (`eval`, `paper-table`, `show`, `analyze`), and the evaluation
commands' help epilog and model loading (`eval`, `paper-table`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

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


def add_pixel_arguments(parser: argparse.ArgumentParser) -> None:
    """``--min-pixels`` / ``--max-pixels``: the processor's bounds on an image's pixel count."""
    parser.add_argument("--min-pixels", type=int, default=None,
                        help="fewest pixels an image is resized to, where the family's processor takes bounds "
                        "(Qwen-VL; default: the family's, the paper's: 200704 on Qwen2.5-VL, 262144 on Qwen3-VL)")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="most pixels an image is resized to (default: the family's, the paper's: 451584 on "
                        "Qwen2.5-VL, 589824 on Qwen3-VL: at most 576 visual tokens per image)")


def family_protocol(model: Any, processor: Any, args: argparse.Namespace) -> Any:
    """The `EvalProtocol` the model's family declares, with ``--min-pixels`` / ``--max-pixels`` applied;
    None for a family that declares none (then either flag is refused). One-line errors."""
    from reroute.backbones import backbone_for
    from reroute.eval.setup import with_pixel_bounds

    protocol = backbone_for(model, processor).evaluation
    if protocol is None:
        given = "--min-pixels" if args.min_pixels is not None else "--max-pixels" if args.max_pixels is not None else None
        if given is not None:
            raise UserError(f"{given}: {backbone_for(model, processor).family} declares no processor bounds; drop {given}")
        return None
    try:
        return with_pixel_bounds(protocol, args.min_pixels, args.max_pixels)
    except ValueError as error:
        raise UserError(str(error)) from None


#: the help epilog of `reroute eval` and `reroute paper-table` (tiers, outputs, several GPUs)
EVAL_EPILOG = """\
tiers:
  --tier is an avg_T budget in the paper's units: visual tokens out of LLaVA-1.5's 576
  (the paper's tiers are 192, 128, 64). On a model with N visual tokens per image it is
  scaled to tier * N / 576 (the demo model: 144 tokens, so --tier 64 keeps avg_T 16); on
  Qwen2.5-VL, whose N varies per image, every sample gets the same fraction tier / 576.
  Decision layers are the paper's (LLaVA's 32 layers) scaled to the model's depth.
  Qwen2.5-VL runs at the paper's resolution by default (--min-pixels 200704, --max-pixels
  451584: 256 to 576 visual tokens per image); each record's num_visual is what it realised.
  --ratios solved (default) solves each preset's schedule shape for that budget exactly;
  --ratios paper uses the published keep ratios verbatim (tiers 192, 128, 64 only).

output:
  OUTPUT/RUN/TASK.jsonl   one line per sample, appended as each finishes (resume: rerun the
                          same command; samples already there are skipped)
  OUTPUT/RUN/summary.json metrics with 95% intervals, realised avg_T, FLOPs and KV cache
  OUTPUT/RUN/summary.md   relative to vanilla, the routing config, versions
  RUN is --run-name, else "vanilla", "PRESET-TIER-RATIOS" or "config-STEM".

several GPUs or nodes (samples are split by stride; results equal a one-process run):
  accelerate launch --num_processes 8 -m reroute eval --model ... (one node, 8 GPUs)
  accelerate launch --num_machines 2 --machine_rank R --main_process_ip HOST \\
      --main_process_port 29500 --num_processes 16 -m reroute eval ...  (on each of 2 nodes)
  Each process appends to OUTPUT/RUN/TASK.rankR.jsonl; after all finish, rank 0 gathers the
  records (through torch.distributed, no shared disk needed) and writes TASK.jsonl in
  sample order and the summaries.
"""


def prepare_model(args: argparse.Namespace) -> tuple[Any, Any, str, str]:
    """(model, processor, family, device) with one-line errors."""
    from reroute.eval.families import Family, detect_family
    from reroute.eval.setup import load_model, with_pixel_bounds
    from reroute.eval.shard import default_device

    device = args.device or default_device()
    if args.no_progress:  # also transformers' weight-loading bars (this process is a command line)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    model, processor = load_model(args.model, args.dtype, device)
    family = args.family if args.family != "auto" else detect_family(model, processor)
    try:  # the pixel bounds fit the family (refused in one line where it has none)
        with_pixel_bounds(Family(family).protocol, args.min_pixels, args.max_pixels)
    except ValueError as error:
        raise UserError(str(error)) from None
    return model, processor, family, device


def add_clip_argument(parser: argparse.ArgumentParser) -> None:
    """``--clip``: CDPruner's published relevance, from a CLIP checkpoint (`reroute.methods.cdpruner.ClipRelevance`)."""
    parser.add_argument("--clip", default=None,
                        help="CLIP checkpoint (hub id or folder) for the cdpruner presets: relevance in CLIP's space, as "
                        "CDPruner published it (LLaVA-1.5: openai/clip-vit-large-patch14-336; default: the decoder's "
                        "embedding space)")


def add_methods_argument(parser: argparse.ArgumentParser) -> None:
    """``--methods``: the removal presets to run, each with its rerouted counterpart."""
    parser.add_argument("--methods", default=None,
                        help="comma-separated removal presets, each run with its rerouted counterpart, or 'all' "
                        "(default: the paper's: fastv,pdrop,nuwa)")


def chosen_methods(args: argparse.Namespace) -> tuple[str, ...]:
    """``--methods`` checked (`reroute.budgets.pairs.resolve_methods`); a one-line UserError otherwise."""
    from reroute.budgets.pairs import resolve_methods

    given = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        return resolve_methods(given)
    except ValueError as error:
        raise UserError(f"--methods: {error}") from None
