"""The released models' configs with their published dimensions typed in (no download, no weights),
and the one builder of LLaVA-shaped configs and random-weight models that the tests, the
quickstart, the bench and the demo all use.

`reroute cost` reports their cost and `reroute bench` builds random-weight models of their shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def llava_config(text: Mapping[str, Any], vision: Mapping[str, Any], **llava: Any) -> Any:
    """A ``LlavaConfig`` from the Llama decoder's and the CLIP tower's config arguments.

    ``llava`` goes to ``LlavaConfig`` itself (``image_token_id``, ``vision_feature_layer``, ...).
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    return LlavaConfig(text_config=LlamaConfig(**text), vision_config=CLIPVisionConfig(**vision), **llava)


def build_llava(
    config: Any,
    *,
    seed: int = 0,
    attn: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Any:
    """A ``LlavaForConditionalGeneration`` of ``config`` with random weights (deterministic for ``seed``),
    built directly on ``device`` in ``dtype``, in eval mode."""
    from transformers import LlavaForConditionalGeneration

    config._attn_implementation = attn
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, attn_implementation=attn, dtype=dtype)
    model.config._attn_implementation = attn
    return model.eval()


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
