"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP tower, projector, Llama decoder."""

from __future__ import annotations

from typing import Any

from reroute.backbones.base import Backbone, ReleasedShape, register_backbone
from reroute.backbones.evaluation import EvalProtocol, llava_conversation
from reroute.backbones.grids import llava_prompt_grids, processed_pixels
from reroute.backbones.released import llava_config
from reroute.runtime.compat import apply_rotary_pos_emb

#: LLaVA-1.5's RefCOCO prompt (lmms-eval's ``refcoco_bbox_rec``, the paper's "full" prompt); the expression follows it
LLAVA_GROUNDING_PROMPT = (
    "Bounding box coordinates are specified in the format (top-left x, top-left y, bottom-right x, "
    "bottom-right y). All values are floating point numbers bounded between 0 and 1. Please provide "
    "the bounding box coordinate of the region this sentence describes: {expression}"
)

#: the paper's LLaVA protocol (run_eval.py MODEL_PRESETS): boxes already 0..1, a value above 1 kept as it is
LLAVA = EvalProtocol(
    name="llava",
    conversation=llava_conversation,
    grounding_prompt=LLAVA_GROUNDING_PROMPT,
    box_format="normalized",
    box_parser="bracketed",
)


def llava_visual_tokens(config: Any) -> int:
    """One image's visual tokens: the tower's patch grid (plus its CLS feature under the "full" strategy)."""
    vision = config.vision_config
    extra = 1 if getattr(config, "vision_feature_select_strategy", "default") == "full" else 0
    return (vision.image_size // vision.patch_size) ** 2 + extra


def llava_1_5_7b() -> Any:
    """LLaVA-1.5-7B: CLIP ViT-L/14-336 + Vicuna-7B (Llama) decoder, float16 as released."""
    text = dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        dtype="float16",
    )
    vision = dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    return llava_config(text, vision, dtype="float16")


@register_backbone
class LlavaBackbone(Backbone):
    model_classes = ("LlavaForConditionalGeneration",)
    family = "LLaVA-1.5"
    model_types = ("llava",)
    apply_rotary = staticmethod(apply_rotary_pos_emb)
    # one square grid per image, over the processor's pad-to-square, resize and centre crop
    grids = staticmethod(llava_prompt_grids)
    answer_frame = staticmethod(processed_pixels)
    evaluation = LLAVA
    visual_tokens_per_image = staticmethod(llava_visual_tokens)
    nuwa_tower = "clip_cls"
    released = (ReleasedShape("llava-1.5-7b", llava_1_5_7b, 576),)  # 336 px: 24 x 24 CLIP patches

    def visual_token_ids(self, config) -> tuple[int, ...]:
        # every <image> placeholder becomes one visual feature (576 per image at 336 px)
        return (config.image_token_id,)
