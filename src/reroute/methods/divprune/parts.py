"""DivPrune as a vision stage (docs/semantics.md §22): ``vision_stage="divprune"``.

Each image's decoder-ready tokens (the stock ``get_image_features``: LLaVA-1.5's projector
output, Qwen2-VL's / Qwen2.5-VL's merger output) go through `divprune_select`; the picked tokens
enter the decoder unchanged at the prompt positions they had, the others are removed before
layer 0. Parameter ``keep_fraction`` ``f``: an image of ``N`` tokens keeps ``K = round(N f)``
(at least 1; the official ``SUBSET_RATIO``). DivPrune's code is LLaVA's; on Qwen2-VL and
Qwen2.5-VL the same rule on the merged tokens is our extension.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from reroute.methods.divprune.select import divprune_select
from reroute.methods.projected import OneGridStage, one_grid_refusal, projected_images
from reroute.methods.vision_stage import StageImage, register_vision_stage


def divprune_refusal(model: Any) -> str | None:
    """Why DivPrune's stage cannot run on ``model`` (a model or a config), or None."""
    return one_grid_refusal("divprune", model)


@register_vision_stage
class DivPruneStage(OneGridStage):
    """DivPrune on each image's projected tokens. Parameter: ``keep_fraction`` (``K / N``, default 64 / 576)."""

    name = "divprune"

    @torch.no_grad()
    def reduce(self, model: nn.Module, params: Mapping[str, float], inputs: Mapping[str, torch.Tensor]) -> list[StageImage]:
        self.check_model(model)
        out = []
        for tokens, grid, _ in projected_images(model, inputs):
            picks = divprune_select(tokens, self.kept_count(len(tokens), params))
            kept = torch.sort(picks).values
            out.append(StageImage(kept=kept, tokens=tokens[kept], grid=grid))
        return out

    def flops(self, num_tokens: int, params: Mapping[str, float], model_config) -> int:
        """Matmul FLOPs for one image: the ``N x N`` cosine matrix of the ``D``-wide tokens (the picks are comparisons)."""
        width = model_config.text_config.hidden_size
        return 2 * num_tokens * num_tokens * width

