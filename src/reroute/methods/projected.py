"""Each image's decoder-ready tokens on the families with one token grid per image (docs/semantics.md §22).

DivPrune and CDPruner select among the tokens the stock ``get_image_features`` returns: LLaVA-1.5's
projector output (a square grid per image) and Qwen2-VL's / Qwen2.5-VL's merger output (grid
``(t * h / m, w / m)``), tokens in raster order, the order in which the prompt holds them.
Other families' features are not one grid per image (LLaVA-NeXT's newline rows, Qwen3-VL's
DeepStack features, InternVL's and Mistral 3's layouts), so their stages refuse them in one line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from reroute.backbones import backbone_for, backbone_for_config
from reroute.methods.vision_stage import VisionStage, check_keep_fraction, kept_by_fraction

#: the model classes whose ``get_image_features`` returns one ``(N_i, D)`` tensor per image, tokens in raster order
LLAVA, QWEN = ("LlavaForConditionalGeneration",), ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")


def one_grid_refusal(stage: str, model: Any) -> str | None:
    """Why ``stage`` cannot run on ``model`` (a model or a config): None on the families above."""
    try:
        backbone = backbone_for(model) if isinstance(model, nn.Module) else backbone_for_config(model)
    except (TypeError, ValueError) as error:
        return str(error)
    if set(backbone.model_classes) & set(LLAVA + QWEN):
        return None
    return (
        f"vision stage {stage!r} is defined for {', '.join(LLAVA + QWEN)} "
        f"(one token grid per image), not {backbone.family}; use vision_stage=None"
    )


class OneGridStage(VisionStage):
    """A stage that selects ``K = round(N f)`` of each image's projected tokens on the families above
    (DivPrune, CDPruner). Parameter: ``keep_fraction`` ``f`` (``K / N``, default 64 / 576)."""

    params = {"keep_fraction": 64 / 576}

    def check_params(self, params: Mapping[str, float]) -> None:
        super().check_params(params)
        check_keep_fraction(self.name, self.resolved(params)["keep_fraction"])

    def check_model(self, model: nn.Module) -> None:
        if (reason := one_grid_refusal(self.name, model)) is not None:
            raise ValueError(reason)

    def kept_count(self, num_tokens: int, params: Mapping[str, float]) -> int:
        return kept_by_fraction(num_tokens, self.resolved(params)["keep_fraction"])

    def kept_continuous(self, num_tokens: int, params: Mapping[str, float]) -> float:
        return num_tokens * self.resolved(params)["keep_fraction"]


class ProjectedImage(NamedTuple):
    """One image: ``tokens`` ``(N, D)`` decoder-ready, ``grid`` ``(H, W)``, and on LLaVA-1.5 ``patches`` ``(N, C)``,
    the tower layer's patches the projector read (None on Qwen)."""

    tokens: torch.Tensor
    grid: tuple[int, int]
    patches: torch.Tensor | None = None


@torch.no_grad()
def projected_images(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> list[ProjectedImage]:
    """Each image of ``inputs`` (pixel values, and Qwen's grids), in prompt order."""
    inner = model.model
    # the class's own method: the instance attribute is a vision stage's patch while routed
    stock = type(inner).get_image_features
    grid_thw = inputs.get("image_grid_thw")
    if grid_thw is None:  # LLaVA-1.5: one square grid per image
        config = model.config
        layer, strategy = config.vision_feature_layer, config.vision_feature_select_strategy
        out = stock(inner, pixel_values=inputs["pixel_values"], vision_feature_layer=layer, vision_feature_select_strategy=strategy)
        patches = [None] * len(out.pooler_output)
        if isinstance(layer, int):  # the tower layer the projector read (CDPruner's CLIP relevance maps it)
            patches = list(out.hidden_states[layer][:, 1:] if strategy == "default" else out.hidden_states[layer])
        return [ProjectedImage(t, _square(len(t)), p) for t, p in zip(out.pooler_output, patches)]
    # Qwen2-VL / Qwen2.5-VL: merged grids (t * h / m, w / m)
    features = stock(inner, pixel_values=inputs["pixel_values"], image_grid_thw=grid_thw).pooler_output
    merge = inner.visual.spatial_merge_size
    grids = [(t * h // merge, w // merge) for t, h, w in grid_thw.tolist()]
    return [ProjectedImage(tokens, grid) for tokens, grid in zip(features, grids)]


def _square(num_tokens: int) -> tuple[int, int]:
    side = math.isqrt(num_tokens)
    return (side, side) if side * side == num_tokens else (1, num_tokens)
