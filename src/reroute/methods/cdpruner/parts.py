"""CDPruner as a vision stage (docs/semantics.md §22): ``vision_stage="cdpruner"`` is refused on every model, in one line.

CDPruner's relevance needs the instruction embedded by CLIP's text tower and the image tokens
mapped by CLIP's visual projection into the same space (its code loads ``CLIPTextModelWithProjection``
and ``CLIPVisionModelWithProjection`` beside LLaVA). No family here holds those weights (a
``LlavaForConditionalGeneration`` has CLIP's vision tower only), nothing may be downloaded at run
time, and the instruction's text does not reach ``get_image_features`` inside generate(), where the
stage runs. Rather than guess an instruction embedding, the stage refuses; `reroute.methods.cdpruner`'s
functions compute CDPruner's selection for callers who have those embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from reroute.methods.vision_stage import StageImage, VisionStage, kept_by_fraction, register_vision_stage

REFUSAL = (
    "vision stage 'cdpruner' needs the instruction embedded by CLIP's text tower and CLIP's visual projection, "
    "which the model does not hold and generate() does not pass to the vision stage; use vision_stage='divprune' "
    "(diversity without the instruction) or None"
)


@register_vision_stage
class CDPrunerStage(VisionStage):
    """Refused on every model (module docstring). Parameter: ``keep_fraction`` (``K / N``), so that configs and costs can name it."""

    name = "cdpruner"
    params = {"keep_fraction": 64 / 576}

    def check_model(self, model: nn.Module) -> None:
        raise ValueError(REFUSAL)

    def kept_count(self, num_tokens: int, params: Mapping[str, float]) -> int:
        return kept_by_fraction(num_tokens, self.resolved(params)["keep_fraction"])

    def kept_continuous(self, num_tokens: int, params: Mapping[str, float]) -> float:
        return num_tokens * self.resolved(params)["keep_fraction"]

    def reduce(self, model: nn.Module, params: Mapping[str, float], inputs: Mapping[str, torch.Tensor]) -> list[StageImage]:
        raise ValueError(REFUSAL)
