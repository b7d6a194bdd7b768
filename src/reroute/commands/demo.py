"""`reroute demo`: the main job: the bundled model under vanilla and each method's presets at three tiers.

Until the bundled model is installed (src/reroute/demo/model/) it runs the quickstart on a
tiny random LLaVA instead, and says so.
"""

from __future__ import annotations

import argparse
import time

from reroute.commands.common import add_methods_argument, chosen_methods


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="outputs/demo", help="folder for results.json, results.md, decisions.png")
    parser.add_argument("--num-samples", type=int, default=200, help="held-out samples to evaluate (default 200)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--model-dir", default=None, help="a saved demo model (default: the bundled one)")
    add_methods_argument(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-figure", action="store_true",
                        help="skip the decisions figure (drawn only when matplotlib, the 'viz' extra, is installed)")


def run(args: argparse.Namespace) -> int:
    import torch

    from pathlib import Path

    from reroute.demo.modeling import MODEL_DIR

    from reroute.errors import UserError

    methods = chosen_methods(args)  # checked first: a wrong name fails before anything loads
    model_dir = args.model_dir or MODEL_DIR
    if not (MODEL_DIR / "config.json").exists() and args.model_dir is None:
        from reroute.demo.quickstart import run_quickstart

        print("The bundled demo model is not installed: running the quickstart on a tiny random LLaVA instead.")
        return run_quickstart()
    if args.model_dir is not None and not (Path(args.model_dir) / "config.json").is_file():
        problem = "does not exist" if not Path(args.model_dir).exists() else "has no config.json"
        raise UserError(
            f"--model-dir {args.model_dir} {problem}: give a folder written by `reroute train-demo-model --output`, "
            "or leave --model-dir out for the bundled model"
        )
    if args.num_samples < 1 or args.batch_size < 1:
        raise UserError(f"--num-samples and --batch-size must be >= 1, got {args.num_samples} and {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")

    from reroute.commands.extras import install_hint, missing_modules
    from reroute.demo.run import evaluate_demo, format_table, reroute_vs_remove, write_figure, write_results


    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    demo = evaluate_demo(model_dir, args.num_samples, args.batch_size, methods=methods)
    # The results first, the figure last: a missing or failing matplotlib loses none of the evaluation.
    write_results(demo, args.output)
    print()
    print(format_table(demo.rows))
    print()
    print("grounding Acc@0.5, reroute minus remove at the same budget:")
    print("\n".join(f"  {line}" for line in reroute_vs_remove(demo.rows)))
    written = [f"{args.output}/results.json", "results.md"]
    if not args.no_figure:
        missing = missing_modules("viz")
        if missing:
            print(f"\nno decisions.png: the figure needs the 'viz' extra (missing: {', '.join(missing)}): "
                  f"{install_hint('viz')}")
        else:
            write_figure(demo, Path(args.output) / "decisions.png")
            written.append("decisions.png")
    print(f"\nwrote {', '.join(written)}")
    print(f"{time.perf_counter() - start:.0f} s")
    return 0
