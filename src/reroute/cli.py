"""`reroute` on the command line: one subcommand per module under `reroute.commands`.

Every bad input, whichever command and whichever layer finds it, is answered here in one place:
one line on stderr and exit status 2, no usage block and no traceback. Two kinds:

- argparse's own (bad choice, bad type, missing or unknown argument):
  ``reroute eval: error: argument --preset: invalid choice: ... (see reroute eval --help)``
- a `reroute.errors.UserError` (or an OSError on a path the user gave) raised by a command:
  ``reroute eval: --tier must be > 0, got -1``
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

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


class CommandLineError(Exception):
    """argparse's complaint about the command line, with the parser (``reroute`` or ``reroute CMD``) it came from."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog
        self.message = message


class _Parser(argparse.ArgumentParser):
    """argparse's parser, except that a bad command line raises `CommandLineError` (for `main` to
    report in one line) instead of printing the usage block and exiting. Subparsers inherit it."""

    def error(self, message: str) -> NoReturn:
        raise CommandLineError(self.prog, message)


def _module(name: str):
    return importlib.import_module(f"reroute.commands.{name.replace('-', '_')}")


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = _Parser(prog="reroute", description="Visual-token routing for vision-language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only the chosen subcommand's module is imported.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _module(name).add_arguments(p)
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed command line; `CommandLineError` for anything argparse refuses."""
    args, unknown = build_parser(argv).parse_known_args(argv)
    if unknown:  # reported by the subcommand's parser, so the line names the command
        prog = "reroute" if args.command is None else f"reroute {args.command}"
        raise CommandLineError(prog, f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse(argv)
    except CommandLineError as error:
        print(f"{error.prog}: error: {_one_line(error.message)} (see {error.prog} --help)", file=sys.stderr)
        return 2
    if args.command is None:
        build_parser(argv).print_help()
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


def _one_line(error: BaseException | str) -> str:
    text = str(error) or type(error).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    raise SystemExit(main())
