#!/usr/bin/env python
"""`reroute eval` against `reroute demo`'s own evaluation, on the same held-out grounding samples.

The bundled model's held-out grounding scenes are written as a RefCOCO-layout split; each
method is run through the eval runner and through `reroute.demo.run.evaluate_config`, and the
per-sample correctness (IoU >= 0.5) is compared. Prints one line per method.

    python benchmarks/eval_vs_demo.py --samples 100
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eval_vs_demo.py", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=25)
    args = parser.parse_args(argv)

    from tests.helpers.eval_demo_data import write_demo_refcoco

    from reroute.eval.setup import routing_config
    from reroute.demo import modeling, synthetic
    from reroute.demo.run import evaluate_config
    from reroute.eval.records import read_records
    from reroute.eval.runner import EvalRun, evaluate
    from reroute.eval.tasks import get_task

    model, processor = modeling.load_model()
    task = get_task("refcoco_val")
    same_everywhere = True
    with tempfile.TemporaryDirectory() as tmp:
        demo_samples = write_demo_refcoco(Path(tmp) / "data", args.samples)
        samples = task.load(Path(tmp) / "data")
        for method, tier in (("vanilla", None), ("reroute_vs_fastv", 128), ("pdrop", 64)):
            config = routing_config(method, tier, "solved", model)
            run = EvalRun(f"{method}-{tier}", config, "demo", "demo", batch_size=args.batch_size)
            summary = evaluate(model, processor, [(task, samples)], run, Path(tmp) / "out", progress=False)
            records = read_records(Path(tmp) / "out" / run.name / "refcoco_val.jsonl")
            ours = [r["prediction"]["box"] is not None and synthetic.iou(r["prediction"]["box"], r["target"]) >= 0.5
                    for r in records]
            theirs = [p["correct"] for p in evaluate_config(model, processor, demo_samples, config, args.batch_size)[0]]
            acc = summary["tasks"]["refcoco_val"]["metrics"]["acc@0.5"]
            agree = sum(a == b for a, b in zip(ours, theirs))
            same_everywhere &= agree == len(ours)
            print(f"{method}{'' if tier is None else f' tier {tier}'}: reroute eval acc@0.5 {acc['value']:.3f} "
                  f"[{acc['low']:.3f}, {acc['high']:.3f}], reroute demo {sum(theirs) / len(theirs):.3f}; "
                  f"per-sample agreement {agree}/{len(ours)}")
    return 0 if same_everywhere else 1


if __name__ == "__main__":
    sys.exit(main())
