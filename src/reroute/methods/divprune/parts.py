"""DivPrune as a vision stage (docs/semantics.md §22): ``vision_stage="divprune"``.

Each image's decoder-ready tokens (the stock ``get_image_features``: LLaVA-1.5's projector
output, Qwen2-VL's / Qwen2.5-VL's merger output) go through `divprune_select`; the picked tokens
enter the decoder unchanged at the prompt positions they had, the others are removed before
layer 0. Parameter ``keep_fraction`` ``f``: an image of ``N`` tokens keeps ``K = round(N f)``
(at least 1; the official ``SUBSET_RATIO``). DivPrune's code is LLaVA's; on Qwen2-VL and
Qwen2.5-VL the same rule on the merged tokens is our extension.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from reroute.backbones import backbone_for, backbone_for_config
from reroute.methods.divprune.select import divprune_select
from reroute.methods.vision_stage import StageImage, VisionStage, kept_by_fraction, register_vision_stage

#: the model classes whose ``get_image_features`` returns one ``(N_i, D)`` tensor per image, tokens in raster order
LLAVA, QWEN = ("LlavaForConditionalGeneration",), ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")


def divprune_refusal(model: Any) -> str | None:
    """Why DivPrune's stage cannot run on ``model`` (a model or a config), or None."""
    try:
        backbone = backbone_for(model) if isinstance(model, nn.Module) else backbone_for_config(model)
    except (TypeError, ValueError) as error:
        return str(error)
    if set(backbone.model_classes) & set(LLAVA + QWEN):
        return None
    return (
        f"vision stage 'divprune' is defined for {', '.join(LLAVA + QWEN)} "
        f"(one token grid per image), not {backbone.family}; use vision_stage=None"
    )


@register_vision_stage
class DivPruneStage(VisionStage):
    """DivPrune on each image's projected tokens. Parameter: ``keep_fraction`` (``K / N``, default 64 / 576)."""

    name = "divprune"
    params = {"keep_fraction": 64 / 576}

    def check_params(self, params: Mapping[str, float]) -> None:
        super().check_params(params)
        fraction = self.resolved(params)["keep_fraction"]
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
            raise ValueError(f"vision stage 'divprune': keep_fraction={fraction!r} is not in (0, 1]; pass K / N, e.g. 64 / 576")

    def check_model(self, model: nn.Module) -> None:
        if (reason := divprune_refusal(model)) is not None:
            raise ValueError(reason)

    def kept_count(self, num_tokens: int, params: Mapping[str, float]) -> int:
        return kept_by_fraction(num_tokens, self.resolved(params)["keep_fraction"])

    def kept_continuous(self, num_tokens: int, params: Mapping[str, float]) -> float:
        return num_tokens * self.resolved(params)["keep_fraction"]

    @torch.no_grad()
    def reduce(self, model: nn.Module, params: Mapping[str, float], inputs: Mapping[str, torch.Tensor]) -> list[StageImage]:
        self.check_model(model)
        fraction = self.resolved(params)["keep_fraction"]
        inner = model.model
        # the class's own method: the instance attribute is this stage's patch while routed
        stock = type(inner).get_image_features
        grid_thw = inputs.get("image_grid_thw")
        if grid_thw is None:  # LLaVA-1.5: one square grid per image
            config = model.config
            features = stock(
                inner,
                pixel_values=inputs["pixel_values"],
                vision_feature_layer=config.vision_feature_layer,
                vision_feature_select_strategy=config.vision_feature_select_strategy,
            ).pooler_output
            grids = [_square(len(f)) for f in features]
        else:  # Qwen2-VL / Qwen2.5-VL: merged grids (t * h / m, w / m)
            features = stock(inner, pixel_values=inputs["pixel_values"], image_grid_thw=grid_thw).pooler_output
            merge = inner.visual.spatial_merge_size
            grids = [(t * h // merge, w // merge) for t, h, w in grid_thw.tolist()]
        out = []
        for tokens, grid in zip(features, grids):
            picks = divprune_select(tokens, kept_by_fraction(len(tokens), fraction))
            kept = torch.sort(picks).values
            out.append(StageImage(kept=kept, tokens=tokens[kept], grid=grid))
        return out

    def flops(self, num_tokens: int, params: Mapping[str, float], model_config) -> int:
        """Matmul FLOPs for one image: the ``N x N`` cosine matrix of the ``D``-wide tokens (the picks are comparisons)."""
        width = model_config.text_config.hidden_size
        return 2 * num_tokens * num_tokens * width


def _square(num_tokens: int) -> tuple[int, int]:
    side = math.isqrt(num_tokens)
    return (side, side) if side * side == num_tokens else (1, num_tokens)
