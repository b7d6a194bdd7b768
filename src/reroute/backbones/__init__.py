"""Backbone adapters, one per model family; `backbone_for(model)` picks the right one."""

from __future__ import annotations

from torch import nn

from reroute.backbones.base import Backbone
from reroute.runtime.adapter import Positions
from reroute.backbones.internvl import InternVLBackbone
from reroute.backbones.llava import LlavaBackbone
from reroute.backbones.llava_next import LlavaNextBackbone
from reroute.backbones.qwen2_vl import Qwen2VLBackbone
from reroute.backbones.qwen3_vl import Qwen3VLBackbone
from reroute.backbones.refused import refusal

BACKBONES: tuple[type[Backbone], ...] = (
    LlavaBackbone, Qwen2VLBackbone, LlavaNextBackbone, InternVLBackbone, Qwen3VLBackbone,
)


def supported_model_classes() -> list[str]:
    return [name for backbone in BACKBONES for name in backbone.model_classes]


def backbone_for(model: nn.Module) -> Backbone:
    refused = refusal(type(model).__name__)
    if refused is not None:
        raise TypeError(refused)
    for backbone in BACKBONES:
        if backbone.handles(model):
            return backbone()
    raise TypeError(
        f"reroute does not support {type(model).__name__}; load one of {', '.join(supported_model_classes())}"
    )


__all__ = ["Backbone", "Positions", "backbone_for", "supported_model_classes", "BACKBONES"]
