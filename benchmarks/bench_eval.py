#!/usr/bin/env python
"""Throughput of `reroute eval` (samples/s) at batch 1 and batch 8 on the bundled demo model, in one run.

The demo model's own held-out grounding scenes are written as a RefCOCO-layout split (as in
tests/eval_demo_data.py) and evaluated through the eval runner (the code `reroute eval`
runs: processor, routed generate, parsing, per-sample JSONL), once per batch size, vanilla
and routed. Model loading is outside the timing; every run starts from an empty folder.

    python benchmarks/bench_eval.py                  # 48 samples, reroute_vs_pdrop at tier 64
    python benchmarks/bench_eval.py --samples 96 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_eval.py", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--tier", type=int, default=64, help="paper tier of the routed run (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)

    import torch
    from tests.helpers.eval_demo_data import write_demo_refcoco

    from reroute.eval.setup import routing_config
    from reroute.demo import modeling
    from reroute.eval.runner import EvalRun, evaluate
    from reroute.eval.tasks import get_task

    torch.set_num_threads(args.threads)
    model, processor = modeling.load_model()
    task = get_task("refcoco_val")
    with tempfile.TemporaryDirectory() as tmp:
        write_demo_refcoco(Path(tmp) / "data", args.samples)
        samples = task.load(Path(tmp) / "data")
        print(f"bundled demo model, {len(samples)} RefCOCO-layout samples, {args.threads} thread(s)")
        print("| method | batch 1 samples/s | batch 8 samples/s | ratio | acc@0.5 (b1 / b8) |")
        print("|---|---|---|---|---|")
        for method in ("vanilla", "reroute_vs_pdrop"):
            config = routing_config(method, None if method == "vanilla" else args.tier, "solved", model)
            rates, accs = {}, {}
            for batch in (1, 8):
                run = EvalRun(f"{method}-b{batch}", config, "demo", "demo", batch_size=batch)
                start = time.perf_counter()
                summary = evaluate(model, processor, [(task, samples)], run, Path(tmp) / "out", progress=False)
                rates[batch] = len(samples) / (time.perf_counter() - start)
                accs[batch] = summary["tasks"]["refcoco_val"]["metrics"]["acc@0.5"]["value"]
            label = method if config is None else f"{method} tier {args.tier}"
            print(f"| {label} | {rates[1]:.2f} | {rates[8]:.2f} | {rates[8] / rates[1]:.2f}x | "
                  f"{accs[1]:.3f} / {accs[8]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
