"""One task's summary from its records (metrics with 95 % intervals, realised avg_T, FLOPs and KV
cache relative to vanilla), a run's summary.md, and strict-JSON values.

The runner (`reroute.eval.runner`) summarises a task's records as read back from its file, so an
interrupted-and-resumed run summarises exactly like an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch

import reroute
from reroute.budgets.cost import decoder_dims, exact_layer_flops, paper_layer_flops
from reroute.eval.task import Metric, Task

#: the metric tables show for a task family (the papers' choices), unless the task names its own
HEADLINES: dict[str, str] = {"rec": "acc@0.5", "pope": "f1"}


def metric_dict(metric: Metric) -> dict[str, Any]:
    return {"value": metric.value, "low": metric.low, "high": metric.high, "n": metric.n}


def realised_cost(records: Sequence[dict[str, Any]], model: Any) -> dict[str, float]:
    """Decoder prefill FLOPs and KV-cache bytes of the realised per-sample counts, relative to vanilla.

    Each record's layers run on ``num_text + visual_per_layer[l]`` tokens (vanilla:
    ``num_text + num_visual``); FLOPs and bytes are summed over samples before dividing, so
    long prompts weigh more, as they cost more.
    """
    dims = decoder_dims(model)
    dtype_bytes = next(p.element_size() for p in model.parameters() if p.is_floating_point())
    sums = dict.fromkeys(("paper", "exact", "kv", "paper_vanilla", "exact_vanilla", "kv_vanilla"), 0)
    for record in records:
        text, visual = record["num_text"], record["num_visual"]
        for v in record["visual_per_layer"]:
            for suffix, n in (("", text + v), ("_vanilla", text + visual)):
                sums["paper" + suffix] += int(paper_layer_flops(n, dims))
                sums["exact" + suffix] += exact_layer_flops(n, dims)
                sums["kv" + suffix] += 2 * n * dims.kv_width * dtype_bytes
    count = max(len(records), 1)

    def ratio(key: str) -> float:
        return sums[key] / sums[key + "_vanilla"] if sums[key + "_vanilla"] else float("nan")

    return {
        "flops_paper_rel": ratio("paper"),
        "flops_exact_rel": ratio("exact"),
        "kv_rel": ratio("kv"),
        "prefill_gflops_paper": sums["paper"] / count / 1e9,
        "kv_mib": sums["kv"] / count / 2**20,
    }


def versions() -> dict[str, str]:
    import transformers

    return {"reroute": reroute.__version__, "transformers": transformers.__version__, "torch": torch.__version__}


def headline(task: Task, metrics: dict[str, Metric]) -> str | None:
    """The task's own ``headline`` attribute, else `HEADLINES` of its family, else its first metric."""
    for name in (getattr(task, "headline", None), HEADLINES.get(task.family)):
        if name in metrics:
            return name
    return next(iter(metrics), None)


def summarize(task: Task, records: Sequence[dict[str, Any]], model: Any) -> dict[str, Any]:
    """One task's summary: metrics with 95 % intervals, realised avg_T and cost relative to vanilla."""
    metrics = task.score(records)
    return {
        "task": task.name,
        "n": len(records),
        "metrics": {name: metric_dict(metric) for name, metric in metrics.items()},
        # the metric a table shows: the task's own choice when it names one, else its first
        "headline": headline(task, metrics),
        "avg_T": statistics.fmean(r["avg_T"] for r in records) if records else float("nan"),
        "num_visual": statistics.fmean(r["num_visual"] for r in records) if records else float("nan"),
        **realised_cost(records, model),
    }


def _fmt(metric: dict[str, Any]) -> str:
    if metric["value"] is None:
        return "-"
    return f"{metric['value']:.4f} [{metric['low']:.4f}, {metric['high']:.4f}]"


def protocol_lines(protocol: dict[str, Any] | None) -> list[str]:
    """summary.md's statement of the evaluation protocol: the headline's harness, prompts, box format and parser."""
    if protocol is None:
        return []
    post = protocol["short_answer_post_prompt"]
    return [
        (
            f"- headline metrics: {protocol['harness']}; `careful/` metrics: reroute's own reading of the answers "
            "(docs/evaluation.md)"
        ),
        (
            f"- REC prompt: {json.dumps(protocol['grounding_prompt'])}; boxes: {protocol['box_format']}, "
            f"parser: {protocol['box_parser']}"
        ),
        "- short-answer post-prompt: " + ("the task's (lmms-eval's)" if post is None else json.dumps(post)),
    ]


def format_summary(summary: dict[str, Any]) -> str:
    """summary.md: the run's identity, one headline row per task, then every metric."""
    config = summary["config"]
    lines = [
        f"# {summary['run']}",
        "",
        f"- model: `{summary['model']}` (family {summary['family']}, {summary['num_layers']} decoder layers)",
        f"- routing: {'vanilla' if config is None else '`' + json.dumps(config) + '`'}",
        f"- REC frame: {summary['rec_frame']} (careful/ REC metrics only; the headline divides pixels by the original image)",
        *protocol_lines(summary.get("protocol")),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()),
        "",
        "| task | n | headline | value [95% CI] | avg_T | FLOPs rel | KV rel |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, task in summary["tasks"].items():
        head = task["headline"]
        lines.append(
            f"| {name} | {task['n']} | {head} | {_fmt(task['metrics'][head])} | {task['avg_T']:.1f} | "
            f"{task['flops_paper_rel']:.3f} | {task['kv_rel']:.3f} |"
        )
    for name, task in summary["tasks"].items():
        lines += ["", f"## {name}", "", "| metric | value [95% CI] | n |", "|---|---|---|"]
        lines += [f"| {m} | {_fmt(v)} | {v['n']} |" for m, v in task["metrics"].items()]
    return "\n".join(lines) + "\n"


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
