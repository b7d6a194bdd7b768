"""`reroute demo`: the main job. Until the bundled model is installed it runs the quickstart."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="outputs/demo", help="folder for the table (JSON, markdown) and figure")


def run(args: argparse.Namespace) -> int:
    from reroute.quickstart import run_quickstart

    print("The bundled demo model is not installed yet: running the quickstart on a tiny random LLaVA instead.")
    return run_quickstart()
