"""`reroute paper-table`: the paper's methods (or ``--methods``), removed and rerouted, x tier x task
through the eval runner, then one table.

Each (method, tier) is an ordinary `reroute eval` run in its own folder under ``--output``,
so the table is resumable run by run and sample by sample, and shards under
``accelerate launch`` like `reroute eval`. The table (``paper_table.md`` / ``.json``) has one
row per method and tier and one column per task's headline metric (the first metric its
`score` returns), then avg_T, decoder FLOPs and KV cache relative to vanilla (averaged over
the tasks).

As the paper ran it: one sample per generate() call by default (``--batch-size``), and on
Qwen2.5-VL, where Nüwa publishes overall keep ratios instead of tiers, Nüwa's rows use those
(0.75, 0.5, 0.25 in the rows of tiers 192, 128, 64, as `reroute cost` pairs them) with
``ratios="paper"`` whatever ``--ratios`` says.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reroute.budgets import PAPER_TIERS, REFERENCE_NUM_VISUAL
from reroute.budgets.pairs import PAPER_METHODS, presets_of
from reroute.commands.common import (
    EVAL_EPILOG,
    add_clip_argument,
    add_methods_argument,
    add_pixel_arguments,
    chosen_methods,
    prepare_model,
)
from reroute.commands.extras import require_extra
from reroute.errors import UserError
from reroute.eval.setup import (
    DTYPES,
    VANILLA,
    check_routable,
    instruction_encoder,
    load_samples,
    one_line,
    parse_tasks,
    routing_config,
    uses_instruction_encoder,
)
from reroute.eval.task import model_families
from reroute.methods.nuwa.params import QWEN_RATIOS
from reroute.methods.nuwa.presets import NUWA_PRESETS, publishes_keep_ratios
from reroute.registry import PRESETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EVAL_EPILOG
    parser.add_argument("--model", required=True, help="Hugging Face Hub id or local folder of a saved model")
    parser.add_argument("--data-dir", required=True, help="folder holding the benchmarks' local files")
    parser.add_argument("--output", default="outputs/paper_table", help="results folder (default outputs/paper_table)")
    parser.add_argument("--tasks", default="refcoco_val,pope", help="comma-separated task names (default refcoco_val,pope)")
    parser.add_argument("--limit", type=int, default=None, help="first N samples of each task")
    add_methods_argument(parser)
    parser.add_argument("--ratios", default="solved", choices=("solved", "paper"), help="keep ratios: solved (default) or paper")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="samples per generate() call (default 1, as the paper ran; docs/evaluation.md, \"Batching\")")
    parser.add_argument("--family", default="auto", choices=("auto", *model_families()))
    add_pixel_arguments(parser)
    add_clip_argument(parser)
    parser.add_argument("--rec-frame", default="original", choices=("original", "resized"))
    parser.add_argument("--dtype", default="auto", choices=DTYPES)
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


@dataclass(frozen=True)
class TableRun:
    """One row of the table: ``method`` at paper ``tier`` (None: vanilla), run as ``name`` with
    ``ratios``; ``keep`` is Nüwa's published overall keep ratio where the row uses one (Qwen2.5-VL)."""

    method: str
    tier: int | None
    name: str
    ratios: str | None = None
    keep: float | None = None

    def preset_tier(self) -> float | None:
        """The tier `routing_config` is asked for: Nüwa's keep ratio addresses its published setting
        as ``keep x 576`` (`reroute.methods.nuwa.presets`)."""
        return self.tier if self.keep is None else self.keep * REFERENCE_NUM_VISUAL

    def labels(self) -> dict[str, Any]:
        labels = {"method": self.method, "tier": self.tier, "ratios": self.ratios}
        return labels if self.keep is None else {**labels, "keep": self.keep}


def table_runs(ratios: str, model: Any = None, methods: Sequence[str] = PAPER_METHODS) -> list[TableRun]:
    """Every row, in table order: vanilla, then each of ``methods`` (removal presets) and its rerouted
    counterpart at each tier, in the presets' registration order. On a model where Nüwa publishes keep
    ratios (Qwen2.5-VL) its rows use them, largest first (tiers 192, 128, 64 -> keep 0.75, 0.5, 0.25)."""
    runs = [TableRun(VANILLA, None, VANILLA)]
    nuwa_keeps = sorted(QWEN_RATIOS, reverse=True) if model is not None and _publishes_keep_ratios(model) else None
    for method in presets_of(methods):
        for index, tier in enumerate(PAPER_TIERS):
            if method in NUWA_PRESETS and nuwa_keeps is not None:
                runs.append(TableRun(method, tier, f"{method}-{tier}-paper", "paper", nuwa_keeps[index]))
            elif ratios != "paper" or tier in getattr(PRESETS.get(method), "paper_ratios", (tier,)):
                runs.append(TableRun(method, tier, f"{method}-{tier}-{ratios}", ratios))  # no published set: no row
    return runs


def _publishes_keep_ratios(model: Any) -> bool:
    try:
        return publishes_keep_ratios(model)
    except (TypeError, ValueError):  # a family without a Nüwa tower: its rows are refused later, as before
        return False


def format_table(rows: list[dict[str, Any]], task_names: list[str]) -> str:
    """Markdown: one row per (method, tier); each task's headline metric with its 95 % interval."""
    headlines = []
    for name in task_names:
        metric = next((r["tasks"][name]["headline"] for r in rows if name in r["tasks"]), "")
        headlines.append(f"{name} {metric}".strip())
    lines = [
        "| method | tier | " + " | ".join(headlines) + " | avg_T | FLOPs rel | KV rel |",
        "|---|---|" + "---|" * len(task_names) + "---|---|---|",
    ]
    for row in rows:
        cells = []
        for name in task_names:
            task = row["tasks"].get(name)
            if task is None:
                cells.append("-")
                continue
            m = task["metrics"][task["headline"]]
            cells.append(f"{m['value']:.4f} [{m['low']:.3f}, {m['high']:.3f}]")
        tier = "-" if row["tier"] is None else str(row["tier"])
        if row.get("keep") is not None:
            tier += f" (keep {row['keep']:g})"
        lines.append(
            f"| {row['method']} | {tier} | " + " | ".join(cells)
            + f" | {row['avg_T']:.1f} | {row['flops_paper_rel']:.3f} | {row['kv_rel']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def table_row(row: TableRun, summary: dict[str, Any], task_names: list[str]) -> dict[str, Any]:
    tasks = {name: summary["tasks"][name] for name in task_names}

    def mean(key: str) -> float:
        return statistics.fmean(t[key] for t in tasks.values())

    return {
        "method": row.method,
        "tier": row.tier,
        **({} if row.keep is None else {"keep": row.keep}),
        "run": summary["run"],
        "config": summary["config"],
        "tasks": tasks,
        "avg_T": mean("avg_T"),
        "flops_paper_rel": mean("flops_paper_rel"),
        "kv_rel": mean("kv_rel"),
    }


def run(args: argparse.Namespace) -> int:
    require_extra("eval", "reading the benchmark files")
    from reroute.eval.runner import EvalRun, check_run_dir, evaluate
    from reroute.eval.shard import current_shard

    try:
        methods = chosen_methods(args)
        if args.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
        tasks = load_samples(parse_tasks(args.tasks), args.data_dir, args.limit)
        model, processor, family, _ = prepare_model(args)
        runs = [(row, routing_config(row.method, row.preset_tier(), row.ratios or args.ratios, model))
                for row in table_runs(args.ratios, model, methods)]
        if args.clip is not None and not any(uses_instruction_encoder(config) for _, config in runs):
            raise UserError("--clip is read by the cdpruner presets only; add cdpruner to --methods or drop --clip")
        encoder = instruction_encoder(args.clip, model, processor)  # loaded once, for the cdpruner rows
        plan = []
        for row, config in runs:
            reads = uses_instruction_encoder(config) and encoder is not None
            check_routable(model, config, encoder if reads else None)
            eval_run = EvalRun(row.name, config, args.model, family, args.rec_frame, args.batch_size, row.labels(),
                               min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                               clip=args.clip if reads else None, instruction_encoder=encoder if reads else None)
            check_run_dir(eval_run, Path(args.output) / row.name)
            plan.append((row, eval_run))
    except (ValueError, TypeError, FileNotFoundError) as error:  # from the model, the tasks or apply()'s checks
        raise UserError(one_line(error)) from None

    shard = current_shard()
    names = [task.name for task, _ in tasks]
    rows = []
    for row, eval_run in plan:
        summary = evaluate(model, processor, tasks, eval_run, args.output, shard=shard, progress=not args.no_progress)
        if summary is not None:
            rows.append(table_row(row, summary, names))
    if not shard.is_main:
        return 0
    table = format_table(rows, names)
    out = Path(args.output)
    (out / "paper_table.md").write_text(table)
    (out / "paper_table.json").write_text(json.dumps({"model": args.model, "rows": rows}, indent=2) + "\n")
    print(table)
    print(f"wrote {out}/paper_table.md, paper_table.json")
    return 0
