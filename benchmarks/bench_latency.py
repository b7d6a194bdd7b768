#!/usr/bin/env python
"""Prefill/decode latency, memory and throughput of vanilla, FastV, PDrop and reroute, side by
side with the decoder-FLOPs limit; the same code as `reroute bench` (see reroute/bench/).

    python benchmarks/bench_latency.py                      # full CPU run (~10 min on 1 thread)
    python benchmarks/bench_latency.py --quick              # ~2 min
    python benchmarks/bench_latency.py --shape llava-1.5-7b --device cuda --json out.json --plot out.png
"""

from __future__ import annotations

import argparse
import sys

from reroute.commands import bench as command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_latency.py",
        description="Prefill/decode latency, memory and throughput of vanilla, remove and reroute, with the FLOPs limit.",
    )
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
