"""Tiny LLaVA-1.5 and Qwen2.5-VL for the Nüwa tests: bigger grids and deeper towers than tests/models.py.

LLaVA: a 6 x 6 patch grid (odd-free, 9 cells) and a 4-layer CLIP tower, so the similarity
layers (16..24 of 24 scaled: hidden states 2..4) differ from the selected layer (-2: 3).
Qwen2.5-VL: a 4-block tower whose last block is full attention, windows of 2 x 2 merged
tokens (so window order differs from raster order on grids wider than 2).
"""

from __future__ import annotations

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)

QWEN_PATCH, QWEN_TEMPORAL = 4, 2
SHARPEN = 8.0


def nuwa_llava(attn: str = "sdpa", seed: int = 0, image_size: int = 48, vision_layers: int = 4) -> LlavaForConditionalGeneration:
    """LLaVA-1.5 layout at toy size: CLIP tower with (image_size / 8)^2 patches + CLS, projector, Llama decoder."""
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers, num_attention_heads=4,
        image_size=image_size, patch_size=8, projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=3,
        vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    config._attn_implementation = attn
    config.vision_config._attn_implementation = attn
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # random init attends almost uniformly; sharper attention makes saliency discriminate
        for layer in model.model.vision_tower.encoder.layers:
            layer.self_attn.q_proj.weight.mul_(SHARPEN)
            layer.self_attn.k_proj.weight.mul_(SHARPEN)
    return model


def nuwa_qwen(attn: str = "sdpa", seed: int = 0, depth: int = 4) -> Qwen2_5_VLForConditionalGeneration:
    """Qwen2.5-VL layout at toy size: windowed vision tower (last block full attention), merger, Qwen2 decoder."""
    torch.manual_seed(seed)
    text = dict(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    vision = dict(
        depth=depth, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=QWEN_PATCH,
        temporal_patch_size=QWEN_TEMPORAL, spatial_merge_size=2, window_size=16, out_hidden_size=64,
        fullatt_block_indexes=[1, depth - 1],
    )
    config = Qwen2_5_VLConfig(
        vision_config=vision, text_config=text, image_token_id=60, video_token_id=61,
        vision_start_token_id=62, vision_end_token_id=63,
    )
    config._attn_implementation = attn
    config.vision_config._attn_implementation = attn
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        for block in model.model.visual.blocks:
            block.attn.qkv.weight[: 2 * block.attn.qkv.in_features].mul_(SHARPEN)  # q and k rows
    return model


def qwen_pixels(grids: list[tuple[int, int, int]], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flattened patches for images of the given ``(t, h, w)`` grids (in patches), and the grid tensor."""
    g = torch.Generator().manual_seed(seed)
    patch_dim = 3 * QWEN_TEMPORAL * QWEN_PATCH * QWEN_PATCH
    n = sum(t * h * w for t, h, w in grids)
    return torch.randn(n, patch_dim, generator=g), torch.tensor(grids)
