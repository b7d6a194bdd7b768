"""`reroute analyze`: how a visual token's importance moves with depth, measured over a dataset.

Runs each preset (at one paper tier, with recorded scores) over a dataset and reports, per
decision, the re-entry rate, the rank correlation of scores with the previous decision and,
on grounding samples, the share of the ground-truth box's patches active in each stage
(definitions: docs/semantics.md, "Decision analysis"). Decisions are taken in prefill, so one
forward per batch is enough: nothing is generated.

Datasets: the demo's held-out synthetic set on a saved demo model (default: the bundled one,
``--model-dir`` for another), or an evaluation task read from local files (``--task``,
``--data-dir``) on any supported model (``--model``).

Writes ``OUTPUT.md`` (the tables), ``OUTPUT.json`` and ``OUTPUT.png`` (the plots).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reroute.budgets import REFERENCE_NUM_VISUAL
from reroute.budgets.pairs import paired_presets
from reroute.commands.common import add_pixel_arguments, check_paper_tier, family_protocol
from reroute.commands.extras import require_extra
from reroute.errors import UserError

DEFAULT_PRESETS = ("pdrop", "reroute_vs_pdrop", "fastv", "reroute_vs_fastv")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", default=None, help="a saved demo model (default: the bundled one)")
    parser.add_argument("--task", default=None, help="an evaluation task (e.g. refcoco_val) instead of the demo set")
    parser.add_argument("--data-dir", default=None, help="the task's local files (with --task)")
    parser.add_argument("--model", default=None, help="with --task: Hub id or folder of the VLM (default: --model-dir)")
    parser.add_argument("--num-samples", type=int, default=200, help="samples (default: %(default)s)")
    parser.add_argument("--tier", type=float, default=64,
                        help=f"the paper's budget out of {REFERENCE_NUM_VISUAL} visual tokens (its reference count), "
                        "scaled to the prompts' count (default: 64)")
    parser.add_argument("--ratios", choices=("solved", "paper"), default="solved")
    parser.add_argument("--presets", default=",".join(DEFAULT_PRESETS),
                        help="comma-separated presets to run (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=50)
    add_pixel_arguments(parser)
    parser.add_argument("--output", default="outputs/analysis/demo",
                        help="path stem: writes STEM.md, STEM.json, STEM.png (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _presets(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in paired_presets()]
    if not names or unknown:
        raise UserError(f"--presets {text!r}: use names from {', '.join(paired_presets())}, comma-separated")
    return names


def _get_task(name: str):
    from reroute.eval.tasks import get_task  # the 'eval' extra, checked at the start of run()

    try:
        return get_task(name)
    except KeyError as error:
        raise UserError(str(error)) from None


def analyze_task(args, names: list[str]):
    """Rows, summaries and meta of the presets over ``args.task``'s first ``args.num_samples`` samples."""
    from reroute.commands.common import load_vlm
    from reroute.demo.analyze import preset_configs
    from reroute.viz.collect import analyze_items, count_visual, model_family, task_items

    if args.data_dir is None:
        raise UserError(f"--task {args.task}: give --data-dir, the folder with the task's files")
    task = _get_task(args.task)
    model, processor = load_vlm(args.model or args.model_dir)
    protocol = family_protocol(model, processor, args)
    processor_kwargs = protocol.processor_kwargs if protocol is not None else {}
    try:
        family = model_family(model, processor)
        items = task_items(task, task.load(args.data_dir, limit=args.num_samples), family, processor)
        if not items:
            raise ValueError(f"task {args.task} has no samples in {args.data_dir}")
        num_visual = count_visual(model, processor, items[0], processor_kwargs)
        configs = preset_configs(names, args.tier, model, num_visual, args.ratios)
        rows, summaries = analyze_items(model, processor, items, configs, args.batch_size, processor_kwargs)
    except (ValueError, FileNotFoundError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    meta = {
        "model": args.model or args.model_dir or "bundled demo model",
        "dataset": f"task {task.name} from {args.data_dir}",
        "num_samples": len(items),
        "num_grounding": sum(item.box is not None for item in items),
        "paper_tier": args.tier,
        "num_visual": num_visual,
        "processor_kwargs": dict(processor_kwargs),
        # the paper's tiers are budgets out of its reference count; the prompts have num_visual tokens
        "tier": args.tier * num_visual / REFERENCE_NUM_VISUAL,
        "ratios": args.ratios,
        "configs": {n: {"action": c.action, "decision_layers": list(c.decision_layers), "keep_ratios": list(c.keep_ratios)}
                    for n, c in configs.items()},
    }
    return rows, summaries, meta


def refuse_pixel_bounds_on_demo(args: argparse.Namespace) -> None:
    """The demo set runs on a demo model, whose processor resizes every image to one size."""
    from reroute.demo.family import DEMO
    from reroute.eval.setup import with_pixel_bounds

    try:
        with_pixel_bounds(DEMO, args.min_pixels, args.max_pixels)
    except ValueError as error:
        raise UserError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    import torch

    from reroute.demo.modeling import MODEL_DIR

    require_extra("viz", "drawing the plots")
    if args.task is not None:
        require_extra("eval", "--task")
    names = _presets(args.presets)
    check_paper_tier(args.ratios, args.tier)
    if args.num_samples < 1 or args.batch_size < 1:
        raise UserError("--num-samples and --batch-size must be >= 1")
    if args.task is None:
        refuse_pixel_bounds_on_demo(args)
        model_dir = Path(args.model_dir) if args.model_dir else MODEL_DIR
        if not (model_dir / "config.json").is_file():
            raise UserError(f"--model-dir {model_dir}: no saved demo model there (config.json missing)")
    if args.threads:
        torch.set_num_threads(args.threads)

    from reroute.viz.statistics import analysis_json, format_analysis, format_summaries
    from reroute.demo.analyze import analyze_demo
    from reroute.viz import plot_analysis

    if args.task is not None:
        rows, summaries, meta = analyze_task(args, names)
    else:
        try:
            rows, summaries, meta = analyze_demo(model_dir, names, args.tier, args.num_samples, args.batch_size, args.ratios)
        except ValueError as error:
            raise UserError(str(error)) from None
    stem = Path(args.output)
    stem.parent.mkdir(parents=True, exist_ok=True)
    table = format_analysis(rows) + "\n\n" + format_summaries(summaries)
    header = (
        f"Decision analysis: {meta['model']} on {meta['num_samples']} samples of the {meta['dataset']} "
        f"({meta['num_grounding']} grounding), paper tier {args.tier:g} ({meta['tier']:g} of {meta['num_visual']} "
        f"visual tokens), {args.ratios} ratios. Definitions: docs/semantics.md, \"Decision analysis\".\n\n"
    )
    Path(f"{stem}.md").write_text(header + table + "\n")
    Path(f"{stem}.json").write_text(analysis_json(rows, meta, summaries) + "\n")
    plot_analysis(rows, f"{stem}.png")
    print(table)
    print(f"\nwrote {stem}.md, {stem}.json, {stem}.png")
    return 0
