"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP tower, projector, Llama decoder."""

from __future__ import annotations

from reroute.backbones.base import Backbone
from reroute.runtime.compat import apply_rotary_pos_emb


class LlavaBackbone(Backbone):
    model_classes = ("LlavaForConditionalGeneration",)
    apply_rotary = staticmethod(apply_rotary_pos_emb)

    def visual_token_ids(self, config) -> tuple[int, ...]:
        # every <image> placeholder becomes one visual feature (576 per image at 336 px)
        return (config.image_token_id,)
