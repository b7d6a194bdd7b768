"""`reroute` on the command line: one subcommand per module under `reroute.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from reroute.errors import UserError

# name -> module under reroute.commands; each module defines `add_arguments(parser)` and `run(args) -> int`.
# Imported lazily so `reroute cost` does not pay for matplotlib and `reroute --help` stays instant.
COMMANDS: dict[str, str] = {
    "demo": "Evaluate the bundled model under every preset and tier (the main job).",
    "cost": "Per-layer tokens, avg_T, FLOPs and KV-cache bytes of every preset.",
    "bench": "Prefill/decode latency and memory of vanilla, remove and reroute, side by side.",
    "eval": "Evaluate a model, vanilla or routed, on benchmarks from local files (resumable, multi-GPU).",
    "paper-table": "Every preset x tier x task through `reroute eval`, then the paper-style table.",
    "train-demo-model": "Reproduce the bundled demo model's weights from a seed.",
    "show": "One figure of remove vs reroute decisions (scores, active patches, answers) on your image.",
    "analyze": "Per-decision re-entry, score rank correlation and GT-box activity over a dataset.",
}


def _module(name: str):
    return importlib.import_module(f"reroute.commands.{name.replace('-', '_')}")


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reroute", description="Visual-token routing for vision-language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only the chosen subcommand's module is imported.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _module(name).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(_module(args.command).run(args) or 0)
    except (UserError, OSError) as error:
        # OSError: a path the user gave cannot be read or written (missing folder, no permission)
        print(f"reroute {args.command}: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"reroute {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    raise SystemExit(main())
