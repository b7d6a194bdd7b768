"""LLaVA-NeXT and LLaVA-OneVision: anyres crops, one newline feature per row, Llama/Mistral or Qwen2 decoder.

Both place every visual feature (the base crop, the unpadded high-resolution grid and the
``image_newline`` rows) at an ``<image>`` placeholder, so the candidate pool is exactly the
placeholder positions (docs/semantics.md §1): newline features are visual tokens like the others. The
decoder is a plain Llama/Qwen2 stack with 1-D positions, as for LLaVA-1.5.

Declared: the released shapes and the evaluation protocol (``llava_next``: LLaVA's REC prompt and
normalised boxes, the conversation from the processor's own chat template; docs/evaluation.md). Not
declared: token grids (a base crop plus an unpadded high-resolution grid broken by newline features is
not one raster), an answer-box frame, a Nüwa tower (Nüwa's stage 1 is defined on single-crop towers).
"""

from __future__ import annotations

from typing import Any

from reroute.backbones.base import Backbone, ReleasedShape, register_backbone
from reroute.backbones.evaluation import EvalProtocol, chat_template_conversation
from reroute.backbones.llava import LLAVA_GROUNDING_PROMPT, llava_1_5_7b
from reroute.runtime.compat import apply_rotary_pos_emb

#: LLaVA-NeXT and OneVision as LLaVA-1.5 (the paper's LLaVA protocol: lmms-eval's full prompt, boxes
#: already 0..1, a value above 1 kept as it is); each checkpoint's own chat template around the text
LLAVA_NEXT = EvalProtocol(
    name="llava_next",
    conversation=chat_template_conversation("LLaVA-NeXT/OneVision"),
    grounding_prompt=LLAVA_GROUNDING_PROMPT,
    box_format="normalized",
    box_parser="bracketed",
    harness="the paper's harness (lmms-eval 0.7.1, RefCOCO patch), its LLaVA rules; the paper ran no LLaVA-NeXT",
)


def llava_next_7b() -> Any:
    """llava-hf/llava-v1.6-vicuna-7b-hf: LLaVA-1.5-7B's CLIP ViT-L/14-336 tower and Vicuna-7B decoder, anyres
    crops on the grid pinpoints 336x672, 672x336, 672x672, 1008x336, 336x1008 (config.json)."""
    from transformers import LlavaNextConfig

    base = llava_1_5_7b()
    return LlavaNextConfig(
        text_config=base.text_config.to_dict(),
        vision_config=base.vision_config.to_dict(),
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        dtype="float16",
    )


def llava_onevision_7b() -> Any:
    """llava-hf/llava-onevision-qwen2-7b-ov-hf: SigLIP-so400m/14-384 tower (27x27 = 729 features per crop),
    Qwen2-7B decoder (28 layers, hidden 3584, MLP 18944, 28 heads / 4 key/value heads), anyres_max_9."""
    from transformers import LlavaOnevisionConfig

    return LlavaOnevisionConfig(
        text_config=dict(
            model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
            num_attention_heads=28, num_key_value_heads=4, vocab_size=152128,
        ),
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
            num_attention_heads=16, image_size=384, patch_size=14,
        ),
        dtype="bfloat16",
    )


@register_backbone
class LlavaNextBackbone(Backbone):
    model_classes = ("LlavaNextForConditionalGeneration", "LlavaOnevisionForConditionalGeneration")
    family = "LLaVA-NeXT/OneVision"
    model_types = ("llava_next", "llava_onevision")
    apply_rotary = staticmethod(apply_rotary_pos_emb)
    evaluation = LLAVA_NEXT
    released = (
        # a 672 x 672 image: base crop 576 + 2 x 2 crops (48 x 48) + 48 newline features
        ReleasedShape("llava-next-7b", llava_next_7b, 2928),
        # a 384 x 384 image: base crop 729 + one 27 x 27 crop + 27 newline features
        ReleasedShape("llava-onevision-7b", llava_onevision_7b, 1485),
    )

    def visual_token_ids(self, config) -> tuple[int, ...]:
        # OneVision also takes video frames (its own placeholder): images and video form one pool
        video = getattr(config, "video_token_id", None)
        return (config.image_token_id,) if video is None else (config.image_token_id, video)
