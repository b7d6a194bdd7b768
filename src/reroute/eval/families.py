"""Model families: how a family's prompt is written, encoded, generated from and decoded.

A task writes the user text (`Task.prompt(sample, family)`); the family wraps it in the
model's conversation format, runs the processor on a batch (left padding, so every prompt
ends at the last column and greedy generation continues all of them at once), and decodes
the new tokens. Families (`reroute.eval.task.MODEL_FAMILIES`):

- ``llava``: LLaVA-1.5's conversation, ``"USER: <image>\\n{text} ASSISTANT:"`` (what the
  llava-hf processors' chat template writes for one user turn);
- ``qwen2_5_vl``: the processor's own chat template with the images as ``{"type": "image"}``
  content before the text, and the generation prompt;
- ``demo``: the bundled demo model's training format (`reroute.demo.modeling.format_prompt`).

`detect_family` reads the family from the model's config (and, for the demo, its tokenizer);
the command line can override it with ``--family``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from reroute.eval.task import MODEL_FAMILIES

# config.model_type -> family; the demo is a "llava" model told apart by its tokenizer
_MODEL_TYPES: dict[str, str] = {"llava": "llava", "qwen2_5_vl": "qwen2_5_vl"}


def _is_demo_tokenizer(tokenizer: Any) -> bool:
    """True when ``tokenizer`` has exactly the demo's closed vocabulary.

    The vocabulary (special tokens, the task words and every coordinate "0.00".."1.00" as one
    token) is what fixes the demo's prompt and answer formats, so it is the marker: a
    retrained demo model keeps it, a LLaVA-1.5 checkpoint (32k SentencePiece tokens) never
    has it.
    """
    from reroute.demo import modeling

    get_vocab = getattr(tokenizer, "get_vocab", None)
    if get_vocab is None:
        return False
    vocab = get_vocab()
    if len(vocab) > 4096:  # cheap early exit for real tokenizers
        return False
    return vocab == modeling.build_tokenizer().get_vocab()


def detect_family(model: Any, processor: Any) -> str:
    """The evaluation family of ``model`` (one of `MODEL_FAMILIES`), from its config and tokenizer."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = _MODEL_TYPES.get(model_type)
    if family is None:
        raise ValueError(
            f"no evaluation family for model type {model_type!r}: pass --family with one of {', '.join(MODEL_FAMILIES)}"
        )
    if family == "llava" and _is_demo_tokenizer(getattr(processor, "tokenizer", None)):
        return "demo"
    return family


@dataclass(frozen=True)
class Encoded:
    """A batch ready for ``model.generate``, and what the family saw of each sample.

    frames: per sample, (width, height) of its first image as the model saw it (after the
        processor's resize), or None when the family keeps the original frame.
    """

    inputs: dict[str, torch.Tensor]
    frames: list[tuple[int, int] | None]


@dataclass(frozen=True)
class Family:
    """One family's prompt format and batch encoding (see the module docstring)."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in MODEL_FAMILIES:
            raise ValueError(f"unknown model family {self.name!r}: use one of {', '.join(MODEL_FAMILIES)}")

    # ------------------------------------------------------------------ prompts
    def prompt(self, processor: Any, user_text: str, num_images: int) -> str:
        """The full prompt text for one user turn with ``num_images`` images before ``user_text``."""
        if self.name == "demo":
            from reroute.demo import modeling

            if num_images != 1:
                raise ValueError(f"the demo model takes exactly one image per prompt, got {num_images}")
            return modeling.format_prompt(user_text)
        if self.name == "llava":
            return "USER: " + "<image>\n" * num_images + f"{user_text} ASSISTANT:"
        # qwen2_5_vl: the processor's chat template (system prompt, vision markers, generation prompt)
        if getattr(processor, "chat_template", None) is None:
            raise ValueError("the Qwen2.5-VL processor has no chat_template: load the model's own processor")
        content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": user_text}]
        messages = [{"role": "user", "content": content}]
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    # ------------------------------------------------------------------ batches
    def encode(self, processor: Any, prompts: Sequence[str], images: Sequence[Sequence[Image.Image]]) -> Encoded:
        """Processor outputs for a batch, left-padded (the tokenizer's own side is restored after)."""
        flat = [image for sample_images in images for image in sample_images]
        tokenizer = processor.tokenizer
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            inputs = processor(images=flat or None, text=list(prompts), return_tensors="pt", padding=True)
        finally:
            tokenizer.padding_side = side
        inputs = dict(inputs)
        frames: list[tuple[int, int] | None] = [None] * len(prompts)
        if self.name == "qwen2_5_vl" and "image_grid_thw" in inputs:
            frames = _qwen_frames(processor, inputs["image_grid_thw"], [len(s) for s in images])
        return Encoded(inputs=inputs, frames=frames)


def _qwen_frames(processor: Any, grid_thw: torch.Tensor, images_per_sample: Sequence[int]) -> list[tuple[int, int] | None]:
    """(width, height) in pixels of each sample's first image after Qwen's resize.

    ``image_grid_thw`` counts patches (before the 2 x 2 merge), so the resized frame is the
    grid times the patch size.
    """
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


def get_family(name: str) -> Family:
    """The `Family` called ``name`` (one-line error for an unknown name)."""
    return Family(name)


def move_to(inputs: dict[str, torch.Tensor], device: torch.device | str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Inputs on ``device``, floating-point pixel tensors in the model's ``dtype`` (ids stay integers)."""
    out = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if value.is_floating_point():
                value = value.to(dtype)
        out[key] = value
    return out


@torch.no_grad()
def generate(model: Any, processor: Any, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> list[str]:
    """Greedy answers of a left-padded batch: the new tokens only, special tokens dropped, stripped."""
    tokenizer = processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad,
    )
    new = out[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
