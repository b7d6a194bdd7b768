"""InternVL (``InternVLForConditionalGeneration``, the ``-hf`` checkpoints): InternViT tiles, pixel
shuffle, MLP projector, Qwen2 (InternVL3) or Qwen3 (InternVL3.5, QK-norm) decoder with 1-D positions."""

from __future__ import annotations

from reroute.backbones.llava import LlavaBackbone


class InternVLBackbone(LlavaBackbone):
    model_classes = ("InternVLForConditionalGeneration",)

    def visual_token_ids(self, config) -> tuple[int, ...]:
        # every tile's features (images and video frames alike) sit at <IMG_CONTEXT> placeholders;
        # the <img>/</img> delimiters around them are text
        return (config.image_token_id,)
