"""The released models' configs with their published dimensions typed in (no download, no weights).

`reroute cost` reports their cost and `reroute bench` builds random-weight models of their shape.
"""

from __future__ import annotations

from typing import Any


def llava_1_5_7b() -> Any:
    """LLaVA-1.5-7B: CLIP ViT-L/14-336 + Vicuna-7B (Llama) decoder, float16 as released."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        dtype="float16",
    )
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    return LlavaConfig(text_config=text, vision_config=vision, dtype="float16")


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


MODEL_SHAPES = {"llava-1.5-7b": llava_1_5_7b, "qwen2.5-vl-7b": qwen2_5_vl_7b}
