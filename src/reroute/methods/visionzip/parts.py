"""VisionZip as a vision stage (docs/semantics.md §22): ``vision_stage="visionzip"``.

Defined for LLaVA-1.5 (a CLIP tower whose CLS attention ranks the patches, one int
``vision_feature_layer``, CLS dropped by ``vision_feature_select_strategy="default"``); towers
without a CLS token (Qwen, Pixtral, ...) are refused in one line: DivPrune needs none.

Parameters: ``keep_fraction`` ``f`` (an image of ``N`` tokens keeps ``K = round(N f)``, at least 1)
and ``contextual_share`` ``s`` (``round(K s)`` of them are contextual, the rest dominant; default
10 / 64: VisionZip's 54 + 10, 108 + 20 and 162 + 30 at 64, 128 and 192 tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from reroute.backbones import backbone_for, backbone_for_config
from reroute.methods.vision_stage import StageImage, VisionStage, kept_by_fraction, register_vision_stage
from reroute.methods.visionzip.select import tower_inputs, visionzip_select

CONTEXTUAL_SHARE = 10 / 64


def visionzip_refusal(model: Any) -> str | None:
    """Why VisionZip's stage cannot run on ``model`` (a model or a config), or None."""
    try:
        backbone = backbone_for(model) if isinstance(model, nn.Module) else backbone_for_config(model)
    except (TypeError, ValueError) as error:
        return str(error)
    config = getattr(model, "config", model)
    vision = getattr(config, "vision_config", None)
    if "LlavaForConditionalGeneration" not in backbone.model_classes or getattr(vision, "model_type", None) != "clip_vision_model":
        return (
            f"vision stage 'visionzip' ranks patches by a CLIP tower's CLS attention (LLaVA-1.5); {backbone.family} "
            "has no such tower: use vision_stage='divprune' or None"
        )
    if not isinstance(config.vision_feature_layer, int) or config.vision_feature_select_strategy != "default":
        return (
            "vision stage 'visionzip' needs one int vision_feature_layer and vision_feature_select_strategy='default'; "
            "load the model with LLaVA-1.5's settings"
        )
    return None


def split(num_tokens: int, params: Mapping[str, float]) -> tuple[int, int]:
    """``(dominant, contextual)`` of an image of ``num_tokens`` tokens."""
    kept = kept_by_fraction(num_tokens, params["keep_fraction"])
    contextual = round(round(kept * params["contextual_share"], 9))
    return kept - contextual, contextual


@register_vision_stage
class VisionZipStage(VisionStage):
    """VisionZip on LLaVA-1.5. Parameters: ``keep_fraction`` (``K / N``, default 64 / 576) and ``contextual_share``."""

    name = "visionzip"
    params = {"keep_fraction": 64 / 576, "contextual_share": CONTEXTUAL_SHARE}

    def check_params(self, params: Mapping[str, float]) -> None:
        super().check_params(params)
        p = self.resolved(params)
        for key, low_open in (("keep_fraction", True), ("contextual_share", False)):
            value = p[key]
            bad = isinstance(value, bool) or not isinstance(value, (int, float))
            if bad or not ((0.0 < value) if low_open else (0.0 <= value)) or value > 1.0 or (not low_open and value == 1.0):
                interval = "(0, 1]" if low_open else "[0, 1)"
                raise ValueError(
                    f"vision stage 'visionzip': {key}={value!r} is not in {interval}; "
                    + ("pass K / N, e.g. 64 / 576" if low_open else "pass contextual / K, e.g. 10 / 64")
                )

    def check_model(self, model: nn.Module) -> None:
        if (reason := visionzip_refusal(model)) is not None:
            raise ValueError(reason)

    def kept_count(self, num_tokens: int, params: Mapping[str, float]) -> int:
        dominant, contextual = split(num_tokens, self.resolved(params))
        return dominant + min(contextual, num_tokens - dominant)

    def kept_continuous(self, num_tokens: int, params: Mapping[str, float]) -> float:
        return num_tokens * self.resolved(params)["keep_fraction"]

    @torch.no_grad()
    def reduce(self, model: nn.Module, params: Mapping[str, float], inputs: Mapping[str, torch.Tensor]) -> list[StageImage]:
        self.check_model(model)
        p = self.resolved(params)
        out = []
        for image in tower_inputs(model, inputs["pixel_values"]):
            num_tokens = image.features.shape[0]
            kept, merged = visionzip_select(image, *split(num_tokens, p))
            tokens = model.model.multi_modal_projector(merged[None])[0]
            side = round(num_tokens**0.5)
            grid = (side, side) if side * side == num_tokens else (1, num_tokens)
            out.append(StageImage(kept=kept, tokens=tokens, grid=grid))
        return out

    def flops(self, num_tokens: int, params: Mapping[str, float], model_config) -> int:
        """Matmul FLOPs for one image: the CLS query and every key of the layer (``C x C`` each), the CLS row,
        and the key cosines of the merged patches against the targets (``C`` wide: heads x head size)."""
        width = model_config.vision_config.hidden_size
        dominant, contextual = split(num_tokens, self.resolved(params))
        joining = max(0, num_tokens - dominant - contextual)
        return 2 * (num_tokens + 2) * width * width + 2 * (num_tokens + 1) * width + 2 * joining * contextual * width
