"""How a family is evaluated: the `EvalProtocol` an adapter declares (`Backbone.evaluation`).

A protocol is everything `reroute eval` (and `reroute analyze --task`) writes or reads
differently per family: the conversation around the user text, the processor call on a batch,
the task prompts that differ per family (the grounding question, the short-answer
post-prompt), and the frame the model saw each image in. A benchmark task writes the
family-independent question and asks the protocol for the rest, so a family's protocol (the
paper's harness: prompt, min/max pixels, coordinate format, answer parser) is filled in its
adapter and nowhere else: a new per-family setting is a field here with today's behaviour as
its default, set where a family differs.

Protocols are named (``--family``): ``llava`` (LLaVA-1.5), ``llava_next`` (LLaVA-NeXT and OneVision),
``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl``, ``internvl`` and, once `reroute.demo` is imported, ``demo``
(the bundled demo model).

REC answers are read the way the paper's harness reads them (docs/semantics.md §9): the
protocol's ``box_parser`` finds the box and its ``box_format`` says what its numbers are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

#: (processor, user_text, num_images) -> the full prompt text
Conversation = Callable[[Any, str, int], str]
#: (processor, inputs, images_per_sample) -> per sample, (width, height) of its first image as the model saw it
FrameRule = Callable[[Any, Mapping[str, torch.Tensor], Sequence[int]], "list[tuple[int, int] | None]"]

#: what the numbers of a REC answer box are (the paper's harness, docs/semantics.md §9):
#: "normalized" already 0..1 (LLaVA), "pixels" of the original image (Qwen2.5-VL), "per_mille" 0..1000 (Qwen3-VL)
BOX_FORMATS: tuple[str, ...] = ("normalized", "pixels", "per_mille")
#: how a REC answer box is found: "bracketed" is the paper's patched lmms-eval (the first "[a, b, c, d]",
#: else the first "(a, b, c, d)"); "square" is stock lmms-eval (square brackets only); "internvl" is
#: InternVL's own RefCOCO evaluation (the first "[a, b, c, d]" or "[[a, b, c, d]]", each piece read as a number)
BOX_PARSERS: tuple[str, ...] = ("bracketed", "square", "internvl")


@dataclass(frozen=True)
class Encoded:
    """A batch ready for ``model.generate``, and what the family saw of each sample.

    frames: per sample, (width, height) of its first image as the model saw it (after the
        processor's resize), or None when the family keeps the original frame.
    """

    inputs: dict[str, torch.Tensor]
    frames: list[tuple[int, int] | None]


@dataclass(frozen=True)
class EvalProtocol:
    """One family's evaluation protocol (see the module docstring).

    name: the ``--family`` name (``"llava"``).
    conversation: wraps one user turn (images first, then the text) in the model's format.
    grounding_prompt: a REC question, ``{expression}`` standing for the referring expression.
    short_answer_post_prompt: what follows a short-answer question (POPE, GQA, MME); None
        keeps the task's own (lmms-eval's "Answer the question using a single word or phrase.").
    resized_frames: where the processor resizes images, the frame each sample's first image was
        seen in (REC answers in pixels are read in it with ``--rec-frame resized``); None: the
        original frame.
    processor_kwargs: extra arguments of the processor call (e.g. min/max pixels).
    box_format: what the numbers of a REC answer box are (`BOX_FORMATS`).
    box_parser: how the box is found in a REC answer (`BOX_PARSERS`).
    harness: the evaluation harness whose prompts and readings the headline metrics reproduce.
    """

    name: str
    conversation: Conversation
    grounding_prompt: str
    short_answer_post_prompt: str | None = None
    resized_frames: FrameRule | None = None
    processor_kwargs: Mapping[str, Any] = field(default_factory=dict)
    box_format: str = "normalized"
    box_parser: str = "bracketed"
    harness: str = "the paper's harness: lmms-eval 0.7.1 with its RefCOCO per-family patch"

    def __post_init__(self) -> None:
        if self.box_format not in BOX_FORMATS:
            raise ValueError(f"box_format must be one of {', '.join(BOX_FORMATS)}, got {self.box_format!r}")
        if self.box_parser not in BOX_PARSERS:
            raise ValueError(f"box_parser must be one of {', '.join(BOX_PARSERS)}, got {self.box_parser!r}")

    def describe(self) -> dict[str, Any]:
        """The protocol as plain JSON data (run.json, summary.md): harness, prompts, box format and parser."""
        return {
            "family": self.name,
            "harness": self.harness,
            "grounding_prompt": self.grounding_prompt,
            "short_answer_post_prompt": self.short_answer_post_prompt,
            "box_format": self.box_format,
            "box_parser": self.box_parser,
        }

    def prompt(self, processor: Any, user_text: str, num_images: int) -> str:
        """The full prompt text for one user turn with ``num_images`` images before ``user_text``."""
        return self.conversation(processor, user_text, num_images)

    def grounding_question(self, expression: str) -> str:
        return self.grounding_prompt.format(expression=expression)

    def post_prompt(self, task_default: str) -> str:
        """What follows a short-answer question: the family's own, else the task's ``task_default``."""
        return task_default if self.short_answer_post_prompt is None else self.short_answer_post_prompt

    def encode(self, processor: Any, prompts: Sequence[str], images: Sequence[Sequence[Any]]) -> Encoded:
        """Processor outputs for a batch, left-padded (so every prompt ends at the last column and
        greedy generation continues all of them at once); the tokenizer's own side is restored."""
        flat = [image for sample_images in images for image in sample_images]
        tokenizer = processor.tokenizer
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            inputs = processor(
                images=flat or None, text=list(prompts), return_tensors="pt", padding=True, **self.processor_kwargs
            )
        finally:
            tokenizer.padding_side = side
        inputs = dict(inputs)
        frames: list[tuple[int, int] | None] = [None] * len(prompts)
        if self.resized_frames is not None:
            frames = self.resized_frames(processor, inputs, [len(s) for s in images])
        return Encoded(inputs=inputs, frames=frames)


# ----------------------------------------------------------------------------- conversations


def llava_conversation(processor: Any, user_text: str, num_images: int) -> str:
    """LLaVA-1.5's one user turn, ``"USER: <image>\\n{text} ASSISTANT:"`` (what the llava-hf processors'
    chat template writes)."""
    return "USER: " + "<image>\n" * num_images + f"{user_text} ASSISTANT:"


def chat_template_conversation(family: str) -> Conversation:
    """The processor's own chat template: the images as ``{"type": "image"}`` content before the text,
    then the generation prompt. ``family`` names the model in the error for a processor without one."""

    def conversation(processor: Any, user_text: str, num_images: int) -> str:
        if getattr(processor, "chat_template", None) is None:
            raise ValueError(f"the {family} processor has no chat_template: load the model's own processor")
        content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": user_text}]
        messages = [{"role": "user", "content": content}]
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    return conversation


# ----------------------------------------------------------------------------- frames


def grid_thw_frames(processor: Any, inputs: Mapping[str, torch.Tensor], images_per_sample: Sequence[int]) -> list[tuple[int, int] | None]:
    """(width, height) in pixels of each sample's first image after a Qwen-VL processor's resize.

    ``image_grid_thw`` counts patches (before the 2 x 2 merge), so the resized frame is the
    grid times the patch size.
    """
    if "image_grid_thw" not in inputs:
        return [None] * len(images_per_sample)
    grid_thw = inputs["image_grid_thw"]
    patch = int(processor.image_processor.patch_size)
    frames: list[tuple[int, int] | None] = []
    index = 0
    for count in images_per_sample:
        if count == 0:
            frames.append(None)
            continue
        _, h, w = (int(v) for v in grid_thw[index])
        frames.append((w * patch, h * patch))
        index += count
    return frames
