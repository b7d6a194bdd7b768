"""Tiny random models built from the real HF config classes, and inputs for them."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
from transformers import LlavaForConditionalGeneration

from reroute.backbones.released import build_llava, llava_config

LLAVA_IMAGE_TOKEN = 3
VOCAB = 64


def tiny_llava(attn: str = "sdpa", num_layers: int = 6, seed: int = 0) -> LlavaForConditionalGeneration:
    """LLaVA-1.5 architecture at toy size: CLIP tower (16 patches + CLS), projector, Llama decoder with GQA."""
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, projection_dim=32,
    )
    text = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    config = llava_config(
        text, vision, image_token_id=LLAVA_IMAGE_TOKEN, vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    return build_llava(config, seed=seed, attn=attn)


@dataclass(frozen=True)
class Prompt:
    """One sample: token ids and its images (``(num_images, 3, H, W)``, possibly empty)."""

    ids: list[int]
    images: torch.Tensor


def llava_prompt(num_images: int, text_before: int = 3, text_after: int = 4, seed: int = 0) -> Prompt:
    """BOS, text, `num_images` blocks of 16 image tokens each followed by a text token, text."""
    g = torch.Generator().manual_seed(seed)
    ids = [1] + torch.randint(5, VOCAB, (text_before,), generator=g).tolist()
    for _ in range(num_images):
        ids += [LLAVA_IMAGE_TOKEN] * 16 + torch.randint(5, VOCAB, (1,), generator=g).tolist()
    ids += torch.randint(5, VOCAB, (text_after,), generator=g).tolist()
    return Prompt(ids=ids, images=torch.randn(num_images, 3, 32, 32, generator=g))


def pad_ids(prompts, padding_side: str = "left") -> dict:
    """``input_ids`` and ``attention_mask`` of prompts (anything with ``.ids``) padded to one length."""
    length = max(len(p.ids) for p in prompts)
    ids = torch.zeros(len(prompts), length, dtype=torch.long)
    mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for b, p in enumerate(prompts):
        sl = slice(length - len(p.ids), length) if padding_side == "left" else slice(0, len(p.ids))
        ids[b, sl] = torch.tensor(p.ids)
        mask[b, sl] = 1
    return {"input_ids": ids, "attention_mask": mask}


def llava_batch(prompts: list[Prompt], padding_side: str = "left") -> dict:
    """Pad prompts into model inputs, with explicit positions that count only real tokens."""
    inputs = pad_ids(prompts, padding_side)
    images = torch.cat([p.images for p in prompts])
    if len(images):
        inputs["pixel_values"] = images
    return inputs


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """What generate() derives for padded batches: positions count only real tokens."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


# ----------------------------------------------------------------------------- Qwen2-VL family
QWEN_IMAGE, QWEN_VIDEO, QWEN_START, QWEN_END = 60, 61, 62, 63
QWEN_PATCH, QWEN_TEMPORAL = 4, 2  # tiny patches; 2x2 merge -> one token per 8x8 pixels


def _qwen_rope(mrope_section: list[int], rope_theta: float) -> dict:
    """The text config's rope settings: ``rope_parameters`` since transformers 5.0, ``rope_scaling`` before."""
    from transformers import Qwen2VLTextConfig

    if "rope_parameters" in inspect.signature(Qwen2VLTextConfig.__init__).parameters:
        return {"rope_parameters": {"rope_type": "default", "rope_theta": rope_theta, "mrope_section": mrope_section}}
    return {"rope_scaling": {"type": "mrope", "mrope_section": mrope_section}, "rope_theta": rope_theta}


def qwen_takes_token_types() -> bool:
    """Qwen-VL models take ``mm_token_type_ids`` (what the processor returns beside the ids) since transformers 5.0."""
    from transformers import Qwen2VLForConditionalGeneration

    return "mm_token_type_ids" in inspect.signature(Qwen2VLForConditionalGeneration.forward).parameters


def tiny_qwen(family: str = "qwen2_5_vl", attn: str = "sdpa", num_layers: int = 6, seed: int = 0):
    """Qwen2.5-VL (or Qwen2-VL) at toy size: windowed vision tower, merger, Qwen2 decoder with M-RoPE and GQA."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    torch.manual_seed(seed)
    text = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    text.update(_qwen_rope(mrope_section=[2, 3, 3], rope_theta=10000.0))
    tokens = dict(
        image_token_id=QWEN_IMAGE, video_token_id=QWEN_VIDEO,
        vision_start_token_id=QWEN_START, vision_end_token_id=QWEN_END,
    )
    if family == "qwen2_5_vl":
        vision = dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=QWEN_PATCH,
            temporal_patch_size=QWEN_TEMPORAL, spatial_merge_size=2, window_size=16, out_hidden_size=64,
            fullatt_block_indexes=[1],
        )
        config = Qwen2_5_VLConfig(vision_config=vision, text_config=text, **tokens)
        cls = Qwen2_5_VLForConditionalGeneration
    else:
        vision = dict(
            depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=4, patch_size=QWEN_PATCH,
            temporal_patch_size=QWEN_TEMPORAL, spatial_merge_size=2,
        )
        config = Qwen2VLConfig(vision_config=vision, text_config=text, **tokens)
        cls = Qwen2VLForConditionalGeneration
    config._attn_implementation = attn
    model = cls(config).eval()
    model.config._attn_implementation = attn
    return model


@dataclass(frozen=True)
class QwenPrompt:
    """One sample: ids and its visual inputs. grids: (t, h, w) in patches per image/video."""

    ids: list[int]
    image_grids: list[tuple[int, int, int]]
    video_grids: list[tuple[int, int, int]]
    images: torch.Tensor  # flattened patches of all images
    videos: torch.Tensor


def qwen_prompt(image_grids=((1, 4, 4),), video_grids=(), text_before=3, text_after=4, seed=0) -> QwenPrompt:
    g = torch.Generator().manual_seed(seed)
    patch_dim = 3 * QWEN_TEMPORAL * QWEN_PATCH * QWEN_PATCH
    ids = [1] + torch.randint(5, 50, (text_before,), generator=g).tolist()
    for grids, token in ((image_grids, QWEN_IMAGE), (video_grids, QWEN_VIDEO)):
        for t, h, w in grids:
            ids += [QWEN_START] + [token] * (t * h * w // 4) + [QWEN_END]
    ids += torch.randint(5, 50, (text_after,), generator=g).tolist()

    def patches(grids):
        n = sum(t * h * w for t, h, w in grids)
        return torch.randn(n, patch_dim, generator=g)

    return QwenPrompt(ids, list(image_grids), list(video_grids), patches(image_grids), patches(video_grids))


def qwen_batch(prompts: list[QwenPrompt], padding_side: str = "left") -> dict:
    inputs = pad_ids(prompts, padding_side)
    ids = inputs["input_ids"]
    # what the processor returns beside input_ids: 0 text, 1 image, 2 video (M-RoPE needs it)
    token_type = (ids == QWEN_IMAGE).long() + 2 * (ids == QWEN_VIDEO).long()
    if qwen_takes_token_types():
        inputs["mm_token_type_ids"] = token_type
    image_grids = [g for p in prompts for g in p.image_grids]
    video_grids = [g for p in prompts for g in p.video_grids]
    if image_grids:
        inputs["pixel_values"] = torch.cat([p.images for p in prompts])
        inputs["image_grid_thw"] = torch.tensor(image_grids)
    if video_grids:
        inputs["pixel_values_videos"] = torch.cat([p.videos for p in prompts])
        inputs["video_grid_thw"] = torch.tensor(video_grids)
    return inputs


# ----------------------------------------------------------------------------- one interface per family
@dataclass(frozen=True)
class Family:
    """How the backbone-parametrized tests build a model and prompts of a family."""

    name: str
    make_model: object  # (attn, num_layers, seed) -> model
    make_prompt: object  # (num_images, size, seed) -> prompt; size varies the image size where the family can
    make_batch: object  # (prompts, padding_side) -> inputs


def _llava_prompt(num_images: int, size: int = 0, seed: int = 0, text_before: int = 3) -> Prompt:
    return llava_prompt(num_images, text_before=text_before, seed=seed)


def _qwen_prompt(num_images: int, size: int = 0, seed: int = 0, text_before: int = 3) -> QwenPrompt:
    grids = [(1, 4, 4 + 4 * ((size + i) % 2)) for i in range(num_images)]  # 4 or 8 tokens per image
    return qwen_prompt(image_grids=grids, text_before=text_before, seed=seed)


FAMILIES = {
    "llava": Family("llava", lambda attn="sdpa", num_layers=6, seed=0: tiny_llava(attn, num_layers, seed), _llava_prompt, llava_batch),
    "qwen2_5_vl": Family(
        "qwen2_5_vl", lambda attn="sdpa", num_layers=6, seed=0: tiny_qwen("qwen2_5_vl", attn, num_layers, seed), _qwen_prompt, qwen_batch
    ),
    "qwen2_vl": Family(
        "qwen2_vl", lambda attn="sdpa", num_layers=6, seed=0: tiny_qwen("qwen2_vl", attn, num_layers, seed), _qwen_prompt, qwen_batch
    ),
}


# ----------------------------------------------------------------------------- newer families (models_more.py)
def _more_families() -> dict:
    from tests.helpers import models_more

    return models_more.families(Family)


# `make test-compat` runs the engine tests on older transformers releases for the first three
# families only (REROUTE_TEST_FAMILIES=llava,qwen2_5_vl,qwen2_vl); the newer ones are tested on 5.24.
_SELECTED = os.environ.get("REROUTE_TEST_FAMILIES")
if _SELECTED is None:
    FAMILIES.update(_more_families())
else:
    FAMILIES = {name: FAMILIES[name] for name in _SELECTED.split(",")}
