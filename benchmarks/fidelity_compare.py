#!/usr/bin/env python
"""Two demo models side by side: `reroute demo` tables and `reroute analyze` drift, as markdown.

Made for issue 18's fidelity check (the bundled model, trained with supervised attention, against
one trained without it), but it reads any two runs of the same commands:

    python -m benchmarks.fidelity_compare \\
        --model bundled outputs/demo/results.json docs/results/analysis/bundled.json \\
        --model no-attn docs/results/fidelity/no_attn/results.json docs/results/analysis/no_attn.json

Each `--model` is a label, its `reroute demo` results.json, then any `reroute analyze` STEM.json
files (one per tier). Prints the tables; `--output` also writes them to a file.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

#: Each reroute preset and the removal method whose ranking rule and budget it keeps.
PAIRS = (("fastv", "reroute_vs_fastv"), ("pdrop", "reroute_vs_pdrop"), ("nuwa", "nuwa_reroute"))


def accuracy_table(demos: dict[str, dict]) -> list[str]:
    labels = list(demos)
    lines = ["| model | grounding Acc@0.5 | VQA acc | samples (grounding) |", "|---|---|---|---|"]
    for label in labels:
        vanilla = next(r for r in demos[label]["rows"] if r["method"] == "vanilla")
        g, v = vanilla["grounding"], vanilla["vqa"]
        lines.append(f"| {label} | {g['value']:.3f} [{g['low']:.3f}, {g['high']:.3f}] "
                     f"| {v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}] | {g['n'] + v['n']} ({g['n']}) |")
    return lines


def edge_table(demos: dict[str, dict], metric: str) -> list[str]:
    """Per tier and pair: removal's and rerouting's value for each model, and rerouting's edge."""
    labels = list(demos)
    header = "| tier (paper) | pair | " + " | ".join(f"{l}: remove / reroute (edge)" for l in labels) + " |"
    lines = [header, "|---|---|" + "---|" * len(labels)]
    index = {l: {(r["method"], r["paper_tier"]): r for r in demos[l]["rows"]} for l in labels}
    tiers = sorted({r["paper_tier"] for r in demos[labels[0]]["rows"] if r["paper_tier"]}, reverse=True)
    for tier in tiers:
        for remove, reroute in PAIRS:
            ran = [index[l][(remove, tier)] for l in labels if (remove, tier) in index[l]]
            if not ran:
                continue
            cells = []
            for l in labels:
                a, b = index[l].get((remove, tier)), index[l].get((reroute, tier))
                if a is None or b is None:
                    cells.append("-")
                    continue
                x, y = a[metric]["value"], b[metric]["value"]
                cells.append(f"{x:.3f} / {y:.3f} ({y - x:+.3f})")
            lines.append(f"| {ran[0]['tier']:g} ({tier}) | {remove} vs {reroute} | " + " | ".join(cells) + " |")
    return lines


def drift_table(analyses: dict[str, list[dict]]) -> list[str]:
    """Per model, tier and run: re-entry and Spearman at each later decision, and GT-box activity."""
    lines = ["| model | tier (paper) | run | re-entry per decision | Spearman vs previous | GT-box patches active (layer mean) |",
             "|---|---|---|---|---|---|"]
    for label, docs in analyses.items():
        for doc in docs:
            meta = doc["meta"]
            tier = f"{meta['tier']:g} ({meta['paper_tier']:g})"
            by_run = defaultdict(list)
            for row in doc["rows"]:
                by_run[row["run"]].append(row)
            for summary in doc["runs"]:
                rows = by_run[summary["run"]][1:]

                def fmt(key: str) -> str:
                    vals = [r[key] for r in rows if r[key] is not None]
                    return " / ".join(f"{v:.2f}" for v in vals) if vals else "-"

                lines.append(f"| {label} | {tier} | {summary['run']} | {fmt('reentry')} | {fmt('spearman')} "
                             f"| {summary['box_active_layer_mean']:.3f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fidelity_compare.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", action="append", required=True, metavar="LABEL DEMO_JSON [ANALYSIS_JSON ...]",
                        help="a label, its `reroute demo` results.json, then any `reroute analyze` STEM.json files")
    parser.add_argument("--output", type=Path, help="also write the markdown here")
    args = parser.parse_args(argv)
    for group in args.model:
        if len(group) < 2:
            parser.error(f"--model {group[0]}: give its `reroute demo` results.json after the label")
    demos = {g[0]: json.loads(Path(g[1]).read_text()) for g in args.model}
    analyses = {g[0]: [json.loads(Path(p).read_text()) for p in g[2:]] for g in args.model}

    out = ["Unrouted (vanilla):", "", *accuracy_table(demos), "",
           "Grounding Acc@0.5, removal vs rerouting at the same budget:", "", *edge_table(demos, "grounding"), "",
           "VQA accuracy, removal vs rerouting at the same budget:", "", *edge_table(demos, "vqa")]
    if any(analyses.values()):
        out += ["", "Drift (`reroute analyze`; re-entry and Spearman at decisions 2, 3, 4):", "", *drift_table(analyses)]
    text = "\n".join(out) + "\n"
    print(text, end="")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
