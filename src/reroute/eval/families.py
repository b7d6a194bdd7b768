"""Model families as the runner uses them: a family's evaluation protocol, generation and decoding.

A task writes the user text (`Task.prompt(sample, family)`); the family's protocol, which its
adapter declares (`reroute.backbones.base.Backbone.evaluation`, `reroute.backbones.evaluation`),
wraps it in the model's conversation format and runs the processor on a batch (left padding, so
every prompt ends at the last column and greedy generation continues all of them at once);
`generate` decodes the new tokens. Families are the declared protocols' names
(`reroute.eval.task.model_families`): ``internvl``, ``llava``, ``llava_next``, ``qwen2_vl``, ``qwen2_5_vl``,
``qwen3_vl`` and, once `reroute.demo` is imported, ``demo``.

`detect_family` asks the family registry for the model's adapter (by its class and, for the
demo, its tokenizer); the command line can override it with ``--family``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from reroute.backbones import EvalProtocol, backbone_for, evaluation_protocols
from reroute.backbones.evaluation import Encoded


def detect_family(model: Any, processor: Any) -> str:
    """The evaluation family of ``model``: the name of the protocol its family's adapter declares.

    `reroute.backbones.NotDeclared` (a one-line ValueError) for a family that declares none.
    """
    backbone = backbone_for(model, processor)
    families = ", ".join(evaluation_protocols())
    protocol = backbone.require("evaluation", f"pass --family with one of {families}")
    return protocol.name


@dataclass(frozen=True)
class Family:
    """One family's prompt format and batch encoding: its declared protocol, by name."""

    name: str

    def __post_init__(self) -> None:
        protocols = evaluation_protocols()
        if self.name not in protocols:
            raise ValueError(f"unknown model family {self.name!r}: use one of {', '.join(protocols)}")

    @property
    def protocol(self) -> EvalProtocol:
        return evaluation_protocols()[self.name]

    def prompt(self, processor: Any, user_text: str, num_images: int) -> str:
        """The full prompt text for one user turn with ``num_images`` images before ``user_text``."""
        return self.protocol.prompt(processor, user_text, num_images)

    def encode(self, processor: Any, prompts: Sequence[str], images: Sequence[Sequence[Image.Image]]) -> Encoded:
        """Processor outputs for a batch, left-padded (the tokenizer's own side is restored after)."""
        return self.protocol.encode(processor, prompts, images)


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


__all__ = ["Encoded", "Family", "detect_family", "generate", "get_family", "move_to"]
