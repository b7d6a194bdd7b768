"""The decision analysis (`reroute.analysis`) of a demo model over the demo's held-out set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from reroute.analysis import DecisionStats, RunSummary, RunTraces, TracedSample, analyze_traces, summarize_runs
from reroute.apply import apply
from reroute.budget import REFERENCE_NUM_VISUAL
from reroute.demo import modeling, synthetic
from reroute.demo.run import EVAL_SEED, EVAL_SPLIT, _encode
from reroute.grids import grids_for
from reroute.pairs import preset_at_paper_tier


@torch.no_grad()
def trace_dataset(model, processor, samples: Sequence[synthetic.Sample], config, batch_size: int) -> list[TracedSample]:
    """One routed prefill per batch with recorded scores; per sample its trace, token grid and
    (grounding samples) the referred object's exact pixel box."""
    out = []
    with apply(model, config, record_scores=True) as handle:
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            inputs = _encode(processor, batch)
            model(**inputs, use_cache=False)
            for b, sample in enumerate(batch):
                grids = grids_for(model, processor, inputs, [sample.image.size], sample=b)
                box = sample.objects[sample.target].pixel_box if sample.kind == "grounding" else None
                out.append(TracedSample(handle.trace[b], tuple(grids), box))
    return out


def analyze_demo(
    model_dir: str | Path | None,
    presets: Sequence[str],
    paper_tier: float = 64,
    num_samples: int = 200,
    batch_size: int = 50,
    ratios: str = "solved",
) -> tuple[list[DecisionStats], list[RunSummary], dict]:
    """Rows of `reroute.analysis.analyze_traces` and `summarize_runs` for each preset at ``paper_tier``, and a meta dict."""
    model, processor = modeling.load_model(model_dir)
    samples = synthetic.make_dataset(num_samples, seed=EVAL_SEED, split=EVAL_SPLIT)
    probe = _encode(processor, samples[:1])
    num_visual = int((probe["input_ids"][0] == model.config.image_token_id).sum())
    runs, configs = [], {}
    for name in presets:
        try:
            config = preset_at_paper_tier(name, paper_tier, model, num_visual, ratios)
        except ValueError as error:
            raise ValueError(f"preset {name} at paper tier {paper_tier:g}: {error}") from None
        configs[name] = {"action": config.action, "decision_layers": list(config.decision_layers),
                         "keep_ratios": list(config.keep_ratios)}
        traced = trace_dataset(model, processor, samples, config, batch_size)
        runs.append(RunTraces(name, config.action, config.decision_layers, tuple(traced)))
    meta = {
        "model": "bundled demo model" if model_dir is None or Path(model_dir) == modeling.MODEL_DIR else str(model_dir),
        "num_samples": len(samples),
        "num_grounding": sum(s.kind == "grounding" for s in samples),
        "split": EVAL_SPLIT,
        "seed": EVAL_SEED,
        "paper_tier": paper_tier,
        "tier": paper_tier * num_visual / REFERENCE_NUM_VISUAL,
        "num_visual": num_visual,
        "ratios": ratios,
        "configs": configs,
    }
    return analyze_traces(runs), summarize_runs(runs), meta
