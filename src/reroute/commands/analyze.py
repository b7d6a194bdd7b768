"""`reroute analyze`: how a visual token's importance moves with depth, measured over a dataset.

Runs each preset (at one paper tier, with recorded scores) over the demo's held-out synthetic
set on a saved demo model (default: the bundled one) and reports, per decision, the re-entry
rate, the rank correlation of scores with the previous decision and, on grounding samples,
the share of the ground-truth box's patches active in each stage (definitions:
docs/semantics.md, "Decision analysis"). Decisions are taken in prefill, so one forward per
batch is enough: nothing is generated.

Writes ``OUTPUT.md`` (the table), ``OUTPUT.json`` and ``OUTPUT.png`` (the plots).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reroute.commands._routing import PRESET_NAMES

DEFAULT_PRESETS = ("pdrop", "reroute_vs_pdrop", "fastv", "reroute_vs_fastv")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", default=None, help="a saved demo model (default: the bundled one)")
    parser.add_argument("--num-samples", type=int, default=200, help="held-out samples (default: %(default)s)")
    parser.add_argument("--tier", type=float, default=64,
                        help="the paper's budget out of 576 visual tokens, scaled to the model's count (default: 64)")
    parser.add_argument("--ratios", choices=("solved", "paper"), default="solved")
    parser.add_argument("--presets", default=",".join(DEFAULT_PRESETS),
                        help="comma-separated presets to run (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--output", default="outputs/analysis/demo",
                        help="path stem: writes STEM.md, STEM.json, STEM.png (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _presets(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PRESET_NAMES]
    if not names or unknown:
        raise SystemExit(f"--presets {text!r}: use names from {', '.join(PRESET_NAMES)}, comma-separated")
    return names


def run(args: argparse.Namespace) -> int:
    import torch

    from reroute.demo.modeling import MODEL_DIR

    names = _presets(args.presets)
    if args.num_samples < 1 or args.batch_size < 1:
        raise SystemExit("--num-samples and --batch-size must be >= 1")
    model_dir = Path(args.model_dir) if args.model_dir else MODEL_DIR
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"--model-dir {model_dir}: no saved demo model there (config.json missing)")
    if args.threads:
        torch.set_num_threads(args.threads)

    from reroute.analysis import analysis_json, format_analysis, format_summaries
    from reroute.demo.analyze import analyze_demo
    from reroute.viz import plot_analysis

    try:
        rows, summaries, meta = analyze_demo(model_dir, names, args.tier, args.num_samples, args.batch_size, args.ratios)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    stem = Path(args.output)
    stem.parent.mkdir(parents=True, exist_ok=True)
    table = format_analysis(rows) + "\n\n" + format_summaries(summaries)
    header = (
        f"Decision analysis: {meta['model']} on {meta['num_samples']} held-out demo samples "
        f"({meta['num_grounding']} grounding), paper tier {args.tier:g} ({meta['tier']:g} of {meta['num_visual']} "
        f"visual tokens), {args.ratios} ratios. Definitions: docs/semantics.md, \"Decision analysis\".\n\n"
    )
    Path(f"{stem}.md").write_text(header + table + "\n")
    Path(f"{stem}.json").write_text(analysis_json(rows, meta, summaries) + "\n")
    plot_analysis(rows, f"{stem}.png")
    print(table)
    print(f"\nwrote {stem}.md, {stem}.json, {stem}.png")
    return 0
