"""The decision analysis (`reroute.viz.statistics`) of a demo model over the demo's held-out set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reroute.viz.statistics import DecisionStats, RunSummary
from reroute.demo import modeling, synthetic
from reroute.demo.run import EVAL_SEED, EVAL_SPLIT
from reroute.budgets import REFERENCE_NUM_VISUAL
from reroute.budgets.pairs import preset_at_paper_tier
from reroute.viz.collect import PromptItem, analyze_items, count_visual


def demo_items(samples: Sequence[synthetic.Sample]) -> list[PromptItem]:
    """The demo's prompts; grounding samples carry the referred object's exact pixel box
    (not the two-decimal answer string)."""
    return [
        PromptItem(
            (s.image,),
            modeling.format_prompt(s.question),
            s.objects[s.target].pixel_box if s.kind == "grounding" else None,
        )
        for s in samples
    ]


def preset_configs(names: Sequence[str], paper_tier: float, model, num_visual: int, ratios: str) -> dict:
    """Each preset at the paper's tier scaled to ``num_visual``; one-line ValueError naming the preset."""
    configs = {}
    for name in names:
        try:
            configs[name] = preset_at_paper_tier(name, paper_tier, model, num_visual, ratios)
        except ValueError as error:
            raise ValueError(f"preset {name} at paper tier {paper_tier:g}: {error}") from None
    return configs


def analyze_demo(
    model_dir: str | Path | None,
    presets: Sequence[str],
    paper_tier: float = 64,
    num_samples: int = 200,
    batch_size: int = 50,
    ratios: str = "solved",
) -> tuple[list[DecisionStats], list[RunSummary], dict]:
    """Rows of `reroute.viz.statistics.analyze_traces` and `summarize_runs` for each preset at ``paper_tier``, and a meta dict."""
    model, processor = modeling.load_model(model_dir)
    samples = synthetic.make_dataset(num_samples, seed=EVAL_SEED, split=EVAL_SPLIT)
    items = demo_items(samples)
    num_visual = count_visual(model, processor, items[0])
    configs = preset_configs(presets, paper_tier, model, num_visual, ratios)
    rows, summaries = analyze_items(model, processor, items, configs, batch_size)
    meta = {
        "model": "bundled demo model" if model_dir is None or Path(model_dir) == modeling.MODEL_DIR else str(model_dir),
        "dataset": f"demo synthetic set, split {EVAL_SPLIT}, seed {EVAL_SEED}",
        "num_samples": len(samples),
        "num_grounding": sum(s.kind == "grounding" for s in samples),
        "paper_tier": paper_tier,
        "num_visual": num_visual,
        # the paper's tiers are budgets out of its reference count; the prompts have num_visual tokens
        "tier": paper_tier * num_visual / REFERENCE_NUM_VISUAL,
        "ratios": ratios,
        "configs": {n: {"action": c.action, "decision_layers": list(c.decision_layers), "keep_ratios": list(c.keep_ratios)}
                    for n, c in configs.items()},
    }
    return rows, summaries, meta
