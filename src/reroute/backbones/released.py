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


def internvl3_8b() -> Any:
    """OpenGVLab/InternVL3-8B-hf: InternViT-300M (448-px tiles of 14-px patches, pixel shuffle 0.5: 256 tokens
    per tile), Qwen2.5-7B decoder (28 layers, hidden 3584, MLP 18944, 28 heads / 4 key/value heads)."""
    from transformers import InternVLConfig

    return InternVLConfig(
        text_config=dict(
            model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
            num_attention_heads=28, num_key_value_heads=4, vocab_size=151674,
        ),
        vision_config=dict(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
            image_size=448, patch_size=14,
        ),
        dtype="bfloat16",
    )


def qwen3_vl_8b() -> Any:
    """Qwen/Qwen3-VL-8B-Instruct: 27-block vision tower (16-px patches, 2x2 merge, DeepStack taps 8/16/24),
    Qwen3-8B-shaped decoder: 36 layers, hidden 4096, MLP 12288, 32 heads / 8 key/value heads of 128, QK-norm."""
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(
        text_config=dict(
            hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
            num_key_value_heads=8, head_dim=128, vocab_size=151936,
        ),
        vision_config=dict(
            depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, patch_size=16,
            out_hidden_size=4096, deepstack_visual_indexes=[8, 16, 24],
        ),
        dtype="bfloat16",
    )


MODEL_SHAPES = {
    "llava-1.5-7b": llava_1_5_7b,
    "qwen2.5-vl-7b": qwen2_5_vl_7b,
    "llava-next-7b": llava_next_7b,
    "llava-onevision-7b": llava_onevision_7b,
    "internvl3-8b": internvl3_8b,
    "qwen3-vl-8b": qwen3_vl_8b,
}

#: visual tokens of one image at each shape's default resolution (what ``reroute cost`` assumes unless told),
#: counted the way the family's processor counts them
VISUAL_TOKENS_PER_IMAGE = {
    "llava-1.5-7b": 576,  # 336 px: 24 x 24 CLIP patches
    "qwen2.5-vl-7b": 256,  # a 448 x 448 image: 32 x 32 patches of 14 px, merged 2 x 2
    "llava-next-7b": 2928,  # a 672 x 672 image: base crop 576 + 2 x 2 crops (48 x 48) + 48 newline features
    "llava-onevision-7b": 1485,  # a 384 x 384 image: base crop 729 + one 27 x 27 crop + 27 newline features
    "internvl3-8b": 256,  # a 448 x 448 image: one tile (no thumbnail for a single tile)
    "qwen3-vl-8b": 196,  # a 448 x 448 image: 28 x 28 patches of 16 px, merged 2 x 2
}
