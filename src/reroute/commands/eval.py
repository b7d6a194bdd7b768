"""`reroute eval`: one model, one routing choice, several benchmarks from local files.

Everything a user can get wrong (model path, task names, data files, preset, tier, config
file) is checked before the first sample runs, and reported as one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import reroute.demo  # noqa: F401  registers the demo model's family (``--family demo``)
from reroute.budgets import preset_names
from reroute.commands.common import EVAL_EPILOG, add_clip_argument, add_pixel_arguments, check_paper_tier, prepare_model
from reroute.commands.extras import require_extra
from reroute.errors import UserError
from reroute.eval.setup import (
    DTYPES,
    VANILLA,
    check_routable,
    instruction_encoder,
    load_samples,
    one_line,
    parse_tasks,
    read_config,
    routing_config,
    uses_instruction_encoder,
)
from reroute.eval.task import model_families

#: the prompt families ``--family`` offers: the evaluation protocols the family adapters declare
MODEL_FAMILIES = model_families()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EVAL_EPILOG
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
    parser.add_argument("--batch-size", type=int, default=8,
                        help="samples per generate() call (default 8; the paper ran 1: docs/evaluation.md, \"Batching\")")
    parser.add_argument("--family", default="auto", choices=("auto", *MODEL_FAMILIES), help="prompt family (default: from the model)")
    add_pixel_arguments(parser)
    add_clip_argument(parser)
    parser.add_argument(
        "--rec-frame", default="original", choices=("original", "resized"),
        help="REC boxes read in the original image's frame (default, the paper's) or in Qwen's resized frame",
    )
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="model dtype (default: the checkpoint's)")
    parser.add_argument("--device", default=None, help="torch device (default: accelerate's, else cuda if present, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


# ---------------------------------------------------------------------------------- checks


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


def default_run_name(args: argparse.Namespace) -> str:
    if args.run_name:
        return args.run_name
    if args.config is not None:
        return f"config-{Path(args.config).stem}"
    if args.preset == VANILLA:
        return VANILLA
    return f"{args.preset}-{args.tier:g}-{args.ratios}" + ("-clip" if args.clip else "")


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
        if args.clip is not None and not uses_instruction_encoder(config):
            raise UserError("--clip is read by the cdpruner presets (vision_stage='cdpruner') only; drop it")
        encoder = instruction_encoder(args.clip, model, processor)
        check_routable(model, config, encoder)
        labels = {"method": Path(args.config).stem if args.config else args.preset, "tier": args.tier,
                  "ratios": None if args.config or args.preset == VANILLA else args.ratios}
        if args.clip is not None:
            labels["clip"] = args.clip
        eval_run = EvalRun(default_run_name(args), config, args.model, family, args.rec_frame, args.batch_size, labels,
                           min_pixels=args.min_pixels, max_pixels=args.max_pixels, clip=args.clip,
                           instruction_encoder=encoder)
        shard = current_shard()
        from reroute.eval.runner import check_run_dir

        check_run_dir(eval_run, Path(args.output) / eval_run.name)
    except (ValueError, TypeError, FileNotFoundError) as error:  # from the model, the tasks or apply()'s checks
        raise UserError(one_line(error)) from None
    summary = evaluate(model, processor, tasks, eval_run, args.output, shard=shard, progress=not args.no_progress)
    if summary is not None:
        from reroute.eval.summary import format_summary

        print(format_summary(summary))
        print(f"wrote {Path(args.output) / eval_run.name}/")
    return 0
