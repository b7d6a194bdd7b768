"""LLaVA-NeXT and LLaVA-OneVision: anyres crops, one newline feature per row, Llama/Mistral or Qwen2 decoder.

Both place every visual feature (the base crop, the unpadded high-resolution grid and the
``image_newline`` rows) at an ``<image>`` placeholder, so the candidate pool is exactly the
placeholder positions (docs/semantics.md §1): newline features are visual tokens like the others. The
decoder is a plain Llama/Qwen2 stack with 1-D positions, as for LLaVA-1.5.
"""

from __future__ import annotations

from reroute.backbones.llava import LlavaBackbone


class LlavaNextBackbone(LlavaBackbone):
    model_classes = ("LlavaNextForConditionalGeneration", "LlavaOnevisionForConditionalGeneration")

    def visual_token_ids(self, config) -> tuple[int, ...]:
        # OneVision also takes video frames (its own placeholder): images and video form one pool
        video = getattr(config, "video_token_id", None)
        return (config.image_token_id,) if video is None else (config.image_token_id, video)
