"""Nüwa as parts (docs/semantics.md §6): its vision-side stage 1 and its stage-2 scoring rules, registered.

The computations are `reroute.methods.nuwa`'s pure functions; this module only says how they plug
into a routed forward:

- ``vision_stage="nuwa"``: before the decoder, each image keeps ``K`` of its ``N`` tokens
  (``K = ceil(N * keep_fraction)``, at most ``per_cell`` per 2 x 2 cell), merged as Nüwa
  does; the kept tokens sit at their original positions (see docs/semantics.md "Nüwa").
- ``scorer="nuwa_llava"``: docs/semantics.md §2's rule read from the layer *before* the decision layer
  (Nüwa scores with layer 15's attention and removes from layer 16 on);
  ``scorer="nuwa_qwen"``: mean of the last 3 query rows, max over heads, same layer.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch
from torch import nn

from reroute.backbones import BACKBONES, backbone_for, backbone_for_config
from reroute.methods.scorer import Scorer, ScoringInputs, register_scorer
from reroute.methods.vision_stage import StageImage, VisionStage, register_vision_stage
from reroute.methods.nuwa import (
    NuwaParams,
    NuwaRatios,
    llava_stage2_scores,
    nuwa_llava_stage1,
    nuwa_qwen_stage1,
    qwen_stage2_scores,
)
from reroute.methods.nuwa.params import LLAVA_NUM_VISUAL, LLAVA_TIERS
from reroute.methods.nuwa.stage1 import LLAVA_QUANTILE, QWEN_QUANTILE

#: the vision towers stage 1 is defined for, as family adapters declare them (`Backbone.nuwa_tower`):
#: a CLIP ViT whose CLS attention gives saliency (LLaVA-1.5), Qwen2.5-VL's windowed tower
CLIP_CLS, QWEN2_5_VIT = "clip_cls", "qwen2_5_vit"
TOWERS = (CLIP_CLS, QWEN2_5_VIT)


def nuwa_tower(model) -> str:
    """The Nüwa tower kind of a model (by its class) or config (by its model type), as its family's
    adapter declares it; `reroute.backbones.NotDeclared` (a one-line ValueError) where it declares none."""
    backbone = backbone_for(model) if isinstance(model, nn.Module) else backbone_for_config(model)
    classes = " and ".join(sorted({c for b in BACKBONES if b.nuwa_tower in TOWERS for c in b.model_classes}))
    tower = backbone.require("nuwa_tower", f"Nüwa's stage 1 is defined for {classes}")
    if tower not in TOWERS:
        raise ValueError(f"{backbone.family} declares Nüwa tower {tower!r}; Nüwa knows {', '.join(TOWERS)}")
    return tower


def _anchors(num_tokens: int, keep_fraction: float) -> int:
    # round first: 0.35 * 100 is 35.00000000000001 in floating point and ceil would give 36
    return max(1, math.ceil(round(num_tokens * keep_fraction, 9)))


@register_vision_stage
class NuwaStage(VisionStage):
    """Nüwa's stage 1 on LLaVA-1.5 (CLIP CLS saliency, additive merge) or Qwen2.5-VL (received
    attention in the last block, convex merge), chosen by the tower kind the family's adapter
    declares (`nuwa_tower`). Parameters: ``keep_fraction`` (``K / N`` per image, ``K = ceil``),
    ``per_cell`` (``n``, 1..4) and ``self_in_denominator`` (0 / 1 or a bool, default False: on
    LLaVA-1.5 the merge divides by ``1 + sum w`` as Nüwa's code does, docs/nuwa.md; Qwen2.5-VL's
    convex merge already counts the anchor itself and ignores it)."""

    name = "nuwa"
    # default: LLaVA-1.5's tier-64 anchors (K = 112 of 576)
    params = {"keep_fraction": LLAVA_TIERS[64].anchors / LLAVA_NUM_VISUAL, "per_cell": 1, "self_in_denominator": False}

    def check_params(self, params: Mapping[str, float]) -> None:
        super().check_params(params)
        p = self.resolved(params)
        fraction, per_cell = p["keep_fraction"], p["per_cell"]
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
            raise ValueError(
                f"vision stage 'nuwa': keep_fraction={fraction!r} is not in (0, 1]; "
                f"pass K / N, e.g. {LLAVA_TIERS[64].anchors} / {LLAVA_NUM_VISUAL}"
            )
        if isinstance(per_cell, bool) or per_cell not in (1, 2, 3, 4):
            raise ValueError(f"vision stage 'nuwa': per_cell={per_cell!r} is not 1, 2, 3 or 4 (a 2 x 2 cell has 4 tokens)")
        own = p["self_in_denominator"]
        if not (isinstance(own, bool) or (isinstance(own, numbers.Integral) and own in (0, 1))):
            raise ValueError(
                f"vision stage 'nuwa': self_in_denominator={own!r} is not 0, 1, False or True; "
                "pass True for the reference code's merge denominator"
            )

    def kept_count(self, num_tokens: int, params: Mapping[str, float]) -> int:
        p = self.resolved(params)
        return min(num_tokens, _anchors(num_tokens, p["keep_fraction"]), p["per_cell"] * math.ceil(num_tokens / 4))

    def kept_continuous(self, num_tokens: int, params: Mapping[str, float]) -> float:
        return num_tokens * self.resolved(params)["keep_fraction"]

    def check_model(self, model: nn.Module) -> None:
        try:
            nuwa_tower(model)
        except ValueError as error:
            raise ValueError(f"vision stage 'nuwa': {error}; use vision_stage=None") from None

    def reduce(self, model: nn.Module, params: Mapping[str, float], inputs: Mapping[str, torch.Tensor]) -> list[StageImage]:
        self.check_model(model)
        p = self.resolved(params)
        per_cell = int(p["per_cell"])
        if nuwa_tower(model) == CLIP_CLS:
            pixels = inputs["pixel_values"]
            vision = model.config.vision_config
            num_tokens = (vision.image_size // vision.patch_size) ** 2
            anchors = min(num_tokens, _anchors(num_tokens, p["keep_fraction"]))
            budget = NuwaParams(per_cell=per_cell, anchors=anchors, keep=anchors)
            images = nuwa_llava_stage1(model, pixels, budget, self_in_denominator=bool(p["self_in_denominator"]))
        else:
            ratios = NuwaRatios(stage1_fraction=p["keep_fraction"], per_cell=per_cell, stage2_fraction=1.0)
            images = nuwa_qwen_stage1(model, inputs["pixel_values"], inputs["image_grid_thw"], ratios)
        return [StageImage(kept=image.kept, tokens=image.tokens, grid=image.grid) for image in images]

    def flops(self, num_tokens: int, params: Mapping[str, float], model_config) -> int:
        """Matmul FLOPs of the merge for one image (saliency and similarity features reuse the tower's pass):
        each merging anchor weighs every token (cosine of ``f``, ``C`` wide) and sums their ``x`` (``D`` wide)."""
        kept = self.kept_count(num_tokens, params)
        if nuwa_tower(model_config) == QWEN2_5_VIT:
            width, quantile = model_config.vision_config.out_hidden_size, QWEN_QUANTILE
        else:
            width, quantile = model_config.vision_config.hidden_size, LLAVA_QUANTILE
        # distinct saliencies: the anchors strictly below the linear-interpolation quantile
        merging = math.ceil((kept - 1) * quantile)
        return 2 * merging * num_tokens * (width + width)


@register_scorer
class NuwaLlavaScorer(Scorer):
    """Nüwa's stage-2 rule on LLaVA-1.5: docs/semantics.md §2's head-mean last-token row, from the layer before the decision."""

    name = "nuwa_llava"
    attention_layer_offset = -1

    def score(self, inputs: ScoringInputs) -> torch.Tensor:
        return llava_stage2_scores(
            inputs.layer, inputs.hidden, inputs.cos, inputs.sin, inputs.key_valid, inputs.query_index, inputs.apply_rotary
        )


@register_scorer
class NuwaQwenScorer(Scorer):
    """Nüwa's stage-2 rule on Qwen2.5-VL: mean of the last 3 query rows, then max over heads,
    from the layer before the decision."""

    name = "nuwa_qwen"
    attention_layer_offset = -1
    query_rows = 3

    def score(self, inputs: ScoringInputs) -> torch.Tensor:
        return qwen_stage2_scores(
            inputs.layer, inputs.hidden, inputs.cos, inputs.sin, inputs.key_valid, inputs.query_index, inputs.apply_rotary
        )
