"""Run routing configurations over a set of prompts with recorded scores, for `reroute.viz.statistics`.

A `PromptItem` is one prompt (its images, its full text, and a ground-truth box when it is a
grounding sample); `trace_items` runs one configuration over them in left-padded batches (one
prefill each: decisions are taken there, so nothing is generated) and returns each sample's
trace with its token grids. Items come from the demo's synthetic set
(`reroute.demo.analyze`) or from an evaluation task (`task_items`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from reroute.viz.statistics import DecisionStats, RunSummary, RunTraces, TracedSample, analyze_traces, summarize_runs
from reroute.apply import apply
from reroute.config import RoutingConfig
from reroute.backbones import backbone_for, evaluation_protocols, grids_for
from reroute.backbones.grids import Box


@dataclass(frozen=True)
class PromptItem:
    """One prompt: images (PIL, in prompt order), the full text (image placeholders included) and,
    for grounding samples, the ground-truth box in original pixels of the first image."""

    images: tuple[Any, ...]
    text: str
    box: Box | None = None


def prompt_text(processor, user_text: str, num_images: int) -> str:
    """The full prompt for one user turn: the processor's chat template when it has one, else
    LLaVA-1.5's ``USER: <image>\\n... ASSISTANT:`` (the bundled demo model's format)."""
    if getattr(processor, "chat_template", None):
        content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": user_text}]
        return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    if "<image>" in user_text:
        return user_text
    return "USER: " + "<image>\n" * num_images + f"{user_text} ASSISTANT:"


def model_family(model, processor) -> str:
    """The prompt family an evaluation task writes for: the protocol the model's family adapter declares
    (`reroute.backbones.base.Backbone.evaluation`; the runner's rule, `reroute.eval.families.detect_family`)."""
    families = ", ".join(evaluation_protocols())
    protocol = backbone_for(model, processor).require("evaluation", f"tasks write their prompts for {families}")
    return protocol.name


def encode_items(processor, items: Sequence[PromptItem], processor_kwargs: Mapping[str, Any] | None = None) -> dict:
    """Processor inputs for a batch of items, left-padded (the tokenizer's side is restored);
    ``processor_kwargs`` are the family's extra processor arguments (`EvalProtocol.processor_kwargs`:
    Qwen-VL's pixel bounds)."""
    tokenizer = getattr(processor, "tokenizer", None)
    side = getattr(tokenizer, "padding_side", None)
    if tokenizer is not None:
        tokenizer.padding_side = "left"
    try:
        images = [image for item in items for image in item.images]
        texts = [item.text for item in items]
        return dict(processor(images=images, text=texts, return_tensors="pt", padding=True, **(processor_kwargs or {})))
    finally:
        if tokenizer is not None:
            tokenizer.padding_side = side


def count_visual(model, processor, item: PromptItem, processor_kwargs: Mapping[str, Any] | None = None) -> int:
    """The visual tokens of one item's prompt (what the presets' tiers are scaled to)."""
    inputs = encode_items(processor, [item], processor_kwargs)
    return int(backbone_for(model).visual_mask(model.config, inputs["input_ids"]).sum())


@torch.no_grad()
def trace_items(
    model, processor, items: Sequence[PromptItem], config: RoutingConfig, batch_size: int,
    processor_kwargs: Mapping[str, Any] | None = None,
) -> list[TracedSample]:
    """Per item: its trace under ``config`` (scores recorded), its token grids and its box."""
    out = []
    with apply(model, config, record_scores=True) as handle:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            inputs = {k: v.to(model.device) for k, v in encode_items(processor, batch, processor_kwargs).items()}
            model(**inputs, use_cache=False)
            for b, item in enumerate(batch):
                grids = grids_for(model, processor, inputs, [image.size for image in item.images], sample=b)
                out.append(TracedSample(handle.trace[b], tuple(grids), item.box))
    return out


def analyze_items(
    model, processor, items: Sequence[PromptItem], configs: Mapping[str, RoutingConfig], batch_size: int = 8,
    processor_kwargs: Mapping[str, Any] | None = None,
) -> tuple[list[DecisionStats], list[RunSummary]]:
    """`reroute.viz.statistics` rows and per-run summaries of each named configuration over ``items``."""
    runs = [
        RunTraces(name, config.action, config.decision_layers,
                  tuple(trace_items(model, processor, items, config, batch_size, processor_kwargs)))
        for name, config in configs.items()
    ]
    return analyze_traces(runs), summarize_runs(runs)


def task_items(task, samples: Sequence, family: str, processor) -> list[PromptItem]:
    """Items from an evaluation task's samples (`reroute.eval.task.Task`): the task's question for
    ``family`` in the model's prompt format; for grounding tasks (``task.family == "rec"``) the
    target, a normalised ``[x1, y1, x2, y2]`` box, scaled to the first image's pixels."""
    items = []
    for sample in samples:
        images = tuple(sample.load_images())
        if not images:
            raise ValueError(f"sample {sample.id} of task {task.name} has no image; the analysis needs images")
        box = None
        if task.family == "rec":
            width, height = images[0].size
            x1, y1, x2, y2 = (float(v) for v in sample.target)
            box = (x1 * width, y1 * height, x2 * width, y2 * height)
        items.append(PromptItem(images, prompt_text(processor, task.prompt(sample, family), len(images)), box))
    return items
