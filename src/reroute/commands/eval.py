"""`reroute eval`: one model, one routing choice, several benchmarks from local files.

Everything a user can get wrong (model path, task names, data files, preset, tier, config
file) is checked before the first sample runs, and reported as one line.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import reroute.demo  # noqa: F401  registers the demo model's family (``--family demo``)
from reroute.budgets import preset_names
from reroute.commands.common import check_paper_tier
from reroute.commands.extras import require_extra
from reroute.errors import UserError
from reroute.eval.task import model_families

#: the prompt families ``--family`` offers: the evaluation protocols the family adapters declare
MODEL_FAMILIES = model_families()

#: routed presets come from the preset registry (`reroute.budgets.preset_names`; a method folder registers its own)
VANILLA = "vanilla"
DTYPES = ("auto", "float32", "bfloat16", "float16")

EPILOG = """\
tiers:
  --tier is an avg_T budget in the paper's units: visual tokens out of LLaVA-1.5's 576
  (the paper's tiers are 192, 128, 64). On a model with N visual tokens per image it is
  scaled to tier * N / 576 (the demo model: 144 tokens, so --tier 64 keeps avg_T 16); on
  Qwen2.5-VL, whose N varies per image, every sample gets the same fraction tier / 576.
  Decision layers are the paper's (LLaVA's 32 layers) scaled to the model's depth.
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--model", required=True, help="Hugging Face Hub id or local folder of a saved model")
    parser.add_argument("--tasks", default="refcoco_val,pope", help="comma-separated task names (default refcoco_val,pope)")
    parser.add_argument("--data-dir", required=True, help="folder holding the benchmarks' local files")
    parser.add_argument("--output", default="outputs/eval", help="results folder (default outputs/eval)")
    parser.add_argument(
        "--preset", default=VANILLA, choices=(VANILLA, *preset_names()), help="routing method (default vanilla)"
    )
    parser.add_argument("--tier", type=float, default=None, help="avg_T budget in the paper's 576-token units (see below)")
    parser.add_argument("--ratios", default="solved", choices=("solved", "paper"), help="keep ratios: solved (default) or paper")
    parser.add_argument("--config", default=None, help="a RoutingConfig as a JSON file (instead of --preset)")
    parser.add_argument("--run-name", default=None, help="the run's folder name under --output")
    parser.add_argument("--limit", type=int, default=None, help="first N samples of each task")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per generate() call (default 8)")
    parser.add_argument("--family", default="auto", choices=("auto", *MODEL_FAMILIES), help="prompt family (default: from the model)")
    parser.add_argument(
        "--rec-frame", default="original", choices=("original", "resized"),
        help="REC boxes read in the original image's frame (default, the paper's) or in Qwen's resized frame",
    )
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="model dtype (default: the checkpoint's)")
    parser.add_argument("--device", default=None, help="torch device (default: accelerate's, else cuda if present, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


# ---------------------------------------------------------------------------------- checks


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


def check_method(args: argparse.Namespace) -> None:
    """Preset, tier, ratios and config agree (before anything is loaded)."""
    if args.config is not None:
        if args.preset != VANILLA or args.tier is not None:
            raise UserError("--config replaces --preset and --tier: give either --config or --preset/--tier")
        return
    if args.preset == VANILLA:
        if args.tier is not None:
            raise UserError("--tier applies to routed presets; drop it with --preset vanilla")
        return
    if args.tier is None:
        raise UserError(f"--preset {args.preset} needs --tier (the paper's tiers are 192, 128, 64)")
    if not args.tier > 0:
        raise UserError(f"--tier must be > 0, got {args.tier:g}")
    check_paper_tier(args.ratios, args.tier)


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


def check_routable(model: Any, config: Any) -> None:
    """`reroute.apply`'s own checks (decision layers inside the decoder, supported model), before any sample runs."""
    import reroute

    if config is not None:
        reroute.apply(model, config).restore()


def default_run_name(args: argparse.Namespace) -> str:
    if args.run_name:
        return args.run_name
    if args.config is not None:
        return f"config-{Path(args.config).stem}"
    if args.preset == VANILLA:
        return VANILLA
    return f"{args.preset}-{args.tier:g}-{args.ratios}"


def prepare_model(args: argparse.Namespace) -> tuple[Any, Any, str, str]:
    """(model, processor, family, device) with one-line errors."""
    from reroute.eval.families import detect_family
    from reroute.eval.shard import default_device

    device = args.device or default_device()
    if args.no_progress:  # also transformers' weight-loading bars (this process is a command line)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    model, processor = load_model(args.model, args.dtype, device)
    family = args.family if args.family != "auto" else detect_family(model, processor)
    return model, processor, family, device


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


# ---------------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    require_extra("eval", "reading the benchmark files")
    from reroute.eval.runner import EvalRun, evaluate
    from reroute.eval.shard import current_shard

    try:
        if args.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
        check_method(args)
        config = read_config(args.config) if args.config is not None else None
        tasks = load_samples(parse_tasks(args.tasks), args.data_dir, args.limit)
        model, processor, family, _ = prepare_model(args)
        if args.config is None:
            config = routing_config(args.preset, args.tier, args.ratios, model)
        check_routable(model, config)
        labels = {"method": Path(args.config).stem if args.config else args.preset, "tier": args.tier,
                  "ratios": None if args.config or args.preset == VANILLA else args.ratios}
        eval_run = EvalRun(default_run_name(args), config, args.model, family, args.rec_frame, args.batch_size, labels)
        shard = current_shard()
        from reroute.eval.runner import check_run_dir

        check_run_dir(eval_run, Path(args.output) / eval_run.name)
    except (ValueError, TypeError, FileNotFoundError) as error:  # from the model, the tasks or apply()'s checks
        raise UserError(one_line(error)) from None
    summary = evaluate(model, processor, tasks, eval_run, args.output, shard=shard, progress=not args.no_progress)
    if summary is not None:
        from reroute.eval.runner import format_summary

        print(format_summary(summary))
        print(f"wrote {Path(args.output) / eval_run.name}/")
    return 0
