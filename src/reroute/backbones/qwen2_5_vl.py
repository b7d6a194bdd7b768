"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): windowed dynamic-resolution vision tower, Qwen2
decoder with 3-D M-RoPE (the layout of `reroute.backbones.qwen2_vl.QwenVLLayout`)."""

from __future__ import annotations

from typing import Any

from reroute.backbones.base import ReleasedShape, register_backbone
from reroute.backbones.evaluation import EvalProtocol, chat_template_conversation, grid_thw_frames
from reroute.backbones.grids import processed_pixels, qwen_prompt_grids
from reroute.backbones.qwen2_vl import QWEN_GROUNDING_PROMPT, QwenVLLayout

# The paper's Qwen grounding prompt (Nüwa's; run_eval.py MODEL_PRESETS): Qwen2.5-VL answers JSON with
# pixel boxes, which the paper divides by the original image's width and height.

QWEN2_5_VL = EvalProtocol(
    name="qwen2_5_vl",
    conversation=chat_template_conversation("Qwen2.5-VL"),
    grounding_prompt=QWEN_GROUNDING_PROMPT,
    resized_frames=grid_thw_frames,
    box_format="pixels",
    # The paper's resolution (its "iso-576-token convention"): lmms-eval's min_pixels = 256 x 28 x 28
    # and max_pixels = 576 x 28 x 28, so an image gives 256 to 576 visual tokens; the checkpoint's
    # own processor allows 4 to 16,384 (docs/evaluation.md, "Resolution").
    processor_kwargs={"size": {"shortest_edge": 256 * 28 * 28, "longest_edge": 576 * 28 * 28}},
)


def qwen2_5_vl_7b() -> Any:
    """Qwen2.5-VL-7B-Instruct: 28-layer decoder with GQA (4 key/value heads), bfloat16 as released."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            head_dim=128,
            vocab_size=152064,
        ),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584),
        dtype="bfloat16",
    )


@register_backbone
class Qwen2_5VLBackbone(QwenVLLayout):
    model_classes = ("Qwen2_5_VLForConditionalGeneration",)
    family = "Qwen2.5-VL"
    model_types = ("qwen2_5_vl", "qwen2_5_vl_text")
    grids = staticmethod(qwen_prompt_grids)
    # absolute coordinates in the resized image's pixels
    answer_frame = staticmethod(processed_pixels)
    evaluation = QWEN2_5_VL
    nuwa_tower = "qwen2_5_vit"
    # a 448 x 448 image: 32 x 32 patches of 14 px, merged 2 x 2
    released = (ReleasedShape("qwen2.5-vl-7b", qwen2_5_vl_7b, 256),)
