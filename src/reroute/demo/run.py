"""`reroute demo`: the bundled model on a held-out set, vanilla vs each method's pair of presets at three tiers.

One table: grounding Acc@0.5 and VQA accuracy (with 95 % Wilson intervals), realised avg_T,
decoder FLOPs and KV-cache bytes relative to vanilla, and prefill time. Tiers are the
paper's 192 / 128 / 64 of 576 visual tokens, scaled to the model's visual-token count, and
the presets' decision layers are scaled to its depth (`reroute.preset`, solved ratios).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

import reroute
from reroute import RoutingConfig
from reroute.budgets import PAPER_TIERS, REFERENCE_NUM_VISUAL, counterparts
from reroute.budgets.pairs import PAPER_METHODS, presets_of, resolve_methods
from reroute.demo import modeling, synthetic
from reroute.demo.evaluation import generate_answers, score_answer, summarize

#: the held-out split the demo evaluates (never used in training)
EVAL_SPLIT, EVAL_SEED = "test", 2026


@dataclass(frozen=True)
class Interval:
    """An accuracy with its 95 % Wilson score interval."""

    value: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def wilson(correct: int, n: int, z: float = 1.96) -> Interval:
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    p = correct / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, center - half), min(1.0, center + half), n)


@dataclass(frozen=True)
class Row:
    method: str
    tier: int | None  # in the model's visual tokens; None for vanilla
    paper_tier: int | None
    config: RoutingConfig | None
    grounding: Interval
    vqa: Interval
    avg_t: float
    flops_ratio: float
    kv_ratio: float
    prefill_ms: float


def demo_configs(
    model, num_visual: int, methods: Sequence[str] = PAPER_METHODS
) -> list[tuple[str, int | None, int | None, RoutingConfig | None]]:
    """(method, tier, paper tier, config): vanilla, then each of ``methods`` (removal presets) and its
    rerouted counterpart at every scaled tier, in the presets' registration order."""
    configs: list[tuple[str, int | None, int | None, RoutingConfig | None]] = [("vanilla", None, None, None)]
    for paper_tier in PAPER_TIERS:
        tier = paper_tier * num_visual / REFERENCE_NUM_VISUAL
        for method in presets_of(methods):
            config = reroute.preset(method, tier=tier, model=model, num_visual=num_visual)
            configs.append((method, round(tier, 1), paper_tier, config))
    return configs


def _encode(processor, samples: Sequence[synthetic.Sample]) -> dict:
    tok = processor.tokenizer
    side, tok.padding_side = tok.padding_side, "left"
    try:
        texts = [modeling.format_prompt(s.question) for s in samples]
        return dict(processor(images=[s.image for s in samples], text=texts, return_tensors="pt", padding=True))
    finally:
        tok.padding_side = side


@torch.no_grad()
def time_prefill(model, inputs: dict, repeats: int = 3) -> float:
    """Median wall time (ms) of one prefill (the forward generate() starts with), after a warm-up."""
    model(**inputs, use_cache=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(**inputs, use_cache=True)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def evaluate_config(model, processor, samples, config: RoutingConfig | None, batch_size: int, progress=None):
    """Predictions of ``model`` under ``config`` and the realised avg_T of each sample (from the traces)."""
    predictions, avg_ts = [], []
    handle = reroute.apply(model, config) if config is not None else None
    try:
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            texts = generate_answers(model, processor, [s.image for s in batch], [s.question for s in batch], len(batch))
            predictions += [score_answer(s, t) for s, t in zip(batch, texts)]
            if handle is not None:
                avg_ts += [s.avg_T for s in handle.trace.samples]
            if progress is not None:
                progress.update(len(batch))
    finally:
        if handle is not None:
            handle.restore()
    return predictions, avg_ts


def _interval(predictions, kind: str) -> Interval:
    chosen = [p for p in predictions if p["kind"] == kind]
    return wilson(sum(p["correct"] for p in chosen), len(chosen))


@dataclass
class DemoRun:
    """One evaluation of the demo: its rows and what writing the results and the figure need."""

    rows: list[Row]
    meta: dict
    samples: list[synthetic.Sample]
    predictions: dict  # (method, paper tier) -> one prediction per sample
    model: torch.nn.Module
    processor: object


def evaluate_demo(
    model_dir: str | Path | None = None,
    num_samples: int = 300,
    batch_size: int = 50,
    progress: bool = True,
    methods: Sequence[str] | None = None,
) -> DemoRun:
    """Evaluate the bundled model (or ``model_dir``) under vanilla and each method's pair at every tier
    (``methods``: removal presets, see `resolve_methods`; default the paper's)."""
    methods = resolve_methods(methods)
    model, processor = modeling.load_model(model_dir)
    samples = synthetic.make_dataset(num_samples, seed=EVAL_SEED, split=EVAL_SPLIT)
    probe = _encode(processor, samples[: min(batch_size, len(samples))])
    num_visual = int((probe["input_ids"][0] == model.config.image_token_id).sum())
    num_text = int(probe["attention_mask"][0].sum()) - num_visual
    configs = demo_configs(model, num_visual, methods)

    rows, runs = [], {}
    bar = tqdm(total=len(configs) * len(samples), desc="reroute demo", unit="sample", disable=not progress)
    for method, tier, paper_tier, config in configs:
        bar.set_postfix_str(f"{method} {paper_tier or ''}".strip())
        predictions, avg_ts = evaluate_config(model, processor, samples, config, batch_size, bar)
        report = reroute.cost(config, model, num_visual=num_visual, num_text=num_text)
        handle = reroute.apply(model, config) if config is not None else None
        try:
            prefill_ms = time_prefill(model, probe)
        finally:
            if handle is not None:
                handle.restore()
        rows.append(
            Row(
                method=method,
                tier=tier,
                paper_tier=paper_tier,
                config=config,
                grounding=_interval(predictions, "grounding"),
                vqa=_interval(predictions, "vqa"),
                avg_t=statistics.fmean(avg_ts) if avg_ts else float(num_visual),
                flops_ratio=report.flops_paper_ratio,
                kv_ratio=report.kv_cache_ratio,
                prefill_ms=prefill_ms,
            )
        )
        runs[(method, paper_tier)] = predictions
    bar.close()

    model_name = "bundled demo model" if model_dir is None or Path(model_dir) == modeling.MODEL_DIR else str(model_dir)
    meta = {"model": model_name, "methods": list(methods), "num_samples": len(samples), "num_visual": num_visual,
            "num_text": num_text,
            "num_layers": model.config.text_config.num_hidden_layers, "summary": summarize(runs[("vanilla", None)])}
    return DemoRun(rows, meta, samples, runs, model, processor)


def write_results(run: DemoRun, output: str | Path) -> None:
    """``results.json`` (every row and the run's meta) and ``results.md`` (the table) in ``output``."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": run.meta, "rows": [_row_dict(r) for r in run.rows]}, indent=2))
    (out / "results.md").write_text(format_table(run.rows) + "\n")


def write_figure(run: DemoRun, path: str | Path) -> None:
    """The decisions figure (needs matplotlib, the 'viz' extra)."""
    _figure(run.samples, run.predictions, run.rows, run.processor, run.model, Path(path))


def run_demo(
    model_dir: str | Path | None = None,
    num_samples: int = 300,
    batch_size: int = 50,
    output: str | Path | None = "outputs/demo",
    figure: bool = True,
    progress: bool = True,
    methods: Sequence[str] | None = None,
) -> list[Row]:
    """Evaluate the bundled model; write ``results.json``, ``results.md`` and ``decisions.png`` to ``output``.

    The results are written before the figure is drawn, so a missing matplotlib loses no work."""
    run = evaluate_demo(model_dir, num_samples, batch_size, progress, methods)
    if output is not None:
        write_results(run, output)
        if figure:
            write_figure(run, Path(output) / "decisions.png")
    return run.rows


def _row_dict(row: Row) -> dict:
    data = asdict(row)
    data["config"] = None if row.config is None else row.config.to_dict()
    return data


def format_table(rows: Sequence[Row]) -> str:
    """The demo's table as markdown (also what the terminal shows)."""
    header = (
        "| method | tier (paper) | grounding Acc@0.5 [95% CI] | VQA acc [95% CI] | avg_T | FLOPs rel | KV rel | prefill ms |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for r in rows:
        tier = "-" if r.tier is None else f"{r.tier:g} ({r.paper_tier})"
        lines.append(
            f"| {r.method} | {tier} | {r.grounding} | {r.vqa} | {r.avg_t:.1f} | {r.flops_ratio:.3f} | "
            f"{r.kv_ratio:.3f} | {r.prefill_ms:.1f} |"
        )
    return "\n".join(lines)


def reroute_vs_remove(rows: Sequence[Row]) -> list[str]:
    """Per tier, grounding of each reroute preset minus its remove counterpart."""
    by_key = {(r.method, r.paper_tier): r for r in rows}
    lines = []
    for tier in PAPER_TIERS:
        for base, ours in counterparts().items():
            if (base, tier) not in by_key:  # a method the run did not choose
                continue
            a, b = by_key[(ours, tier)].grounding, by_key[(base, tier)].grounding
            lines.append(f"tier {tier}: {ours} {a.value:.3f} vs {base} {b.value:.3f} ({a.value - b.value:+.3f})")
    return lines


def _figure(samples, runs, rows, processor, model, path: Path) -> None:
    """One grounding example at the lowest tier: remove vs reroute (PDrop's pair, else the first pair the
    run has), preferring one they disagree on.

    The example is run again alone, scores recorded: a sample's decisions do not depend on its
    batch (tested), and alone its trace positions need no padding offset.
    """
    from reroute.backbones import grids_for
    from reroute.viz import RunView, plot_decisions

    tier = PAPER_TIERS[-1]
    configs = {r.method: r.config for r in rows if r.paper_tier == tier}
    ran = [base for base in counterparts() if base in configs]
    base = "pdrop" if "pdrop" in ran else ran[0]
    ours = counterparts()[base]
    remove_preds = runs[(base, tier)]
    reroute_preds = runs[(ours, tier)]
    candidates = [i for i, s in enumerate(samples) if s.kind == "grounding"]
    disagree = [i for i in candidates if reroute_preds[i]["correct"] and not remove_preds[i]["correct"]]
    index = (disagree or candidates)[0]
    sample = samples[index]
    inputs = _encode(processor, [sample])
    grids = grids_for(model, processor, inputs, [sample.image.size])

    def pixels(box) -> tuple[float, float, float, float] | None:  # the demo's boxes are 0-1 fractions
        return None if box is None else grids[0].frame_to_image(tuple(box), (1.0, 1.0))

    views = []
    for name, preds in ((base, remove_preds), (ours, reroute_preds)):
        with reroute.apply(model, configs[name], record_scores=True) as handle, torch.no_grad():
            model(**inputs)
        name = f"{configs[name].action} ({name})"
        views.append(RunView.from_trace(handle.trace, name=name, answer_box=pixels(preds[index].get("pred_box"))))
    title = f"{sample.question}\nremove ({base}) vs reroute ({ours}), tier {tier}"
    width, height = sample.image.size
    target = (sample.box[0] * width, sample.box[1] * height, sample.box[2] * width, sample.box[3] * height)
    plot_decisions([sample.image], views, grids, title=title, target_box=target, path=str(path))
