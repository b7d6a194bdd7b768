"""Tiny random LLaVA-NeXT, LLaVA-OneVision, InternVL, Qwen3-VL and Mistral 3 models from the real
config classes, and prompts for them (the shapes the processors produce, built directly).

`families(Family)` lists them for `tests.helpers.models.FAMILIES` (the invariant suite): a new family
adds its builder here and one entry there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def pad_ids(prompts, padding_side: str = "left") -> dict:
    """`tests.helpers.models.pad_ids`, imported when called: models.py imports this module at its end, so
    importing it at the top would make a test that imports this module first see a half-built models.py."""
    from tests.helpers.models import pad_ids as pad

    return pad(prompts, padding_side)


VOCAB = 64
IMAGE, VIDEO, START, END = 60, 61, 62, 63
TEXT = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=512, pad_token_id=0, bos_token_id=1,
    # no end-of-sequence token: every generate() runs its max_new_tokens, so runs compare token for token
    eos_token_id=None,
)


def _build(cls, config, attn: str, seed: int):
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = cls._from_config(config, attn_implementation=attn).eval()
    model.config._attn_implementation = attn
    # Placeholder ids get a zero output row (logit 0, below the largest of ~60 random logits), so greedy
    # decoding never emits one: the tests re-run prompt + generated tokens, where one would read as an image slot.
    with torch.no_grad():
        model.lm_head.weight[[IMAGE, VIDEO]] = 0
    return model


# ----------------------------------------------------------------------------- LLaVA-NeXT / OneVision
# 16-px crops of 8-px patches: 2x2 features per crop; the image sizes are grid pinpoints, so no unpadding
ANYRES_CROP = 16
PINPOINTS = [[16, 16], [16, 32], [32, 16], [32, 32]]
ANYRES_SIZES = ((16, 16), (16, 32), (32, 32))


def anyres_tokens(height: int, width: int) -> int:
    """Features of one image: the base crop (2x2), the high-resolution grid, one newline per grid row."""
    rows, cols = 2 * height // ANYRES_CROP, 2 * width // ANYRES_CROP
    return 4 + rows * cols + rows


def tiny_llava_next(family: str = "llava_next", attn: str = "sdpa", num_layers: int = 6, seed: int = 0):
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
    )

    text = dict(TEXT, num_hidden_layers=num_layers)
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=ANYRES_CROP, patch_size=8,
    )
    if family == "llava_next":  # CLIP tower (with CLS, dropped by "default"), Llama decoder
        config = LlavaNextConfig(
            vision_config=dict(vision, model_type="clip_vision_model", projection_dim=32),
            text_config=dict(text, model_type="llama"), image_token_id=IMAGE, image_grid_pinpoints=PINPOINTS,
            vision_feature_select_strategy="default", vision_feature_layer=-2,
        )
        return _build(LlavaNextForConditionalGeneration, config, attn, seed)
    # OneVision: SigLIP tower (no CLS, "full"), Qwen2 decoder
    config = LlavaOnevisionConfig(
        vision_config=dict(vision, model_type="siglip_vision_model"),
        text_config=dict(text, model_type="qwen2"), image_token_id=IMAGE, video_token_id=VIDEO,
        image_grid_pinpoints=PINPOINTS, vision_feature_select_strategy="full", vision_feature_layer=-1,
    )
    return _build(LlavaOnevisionForConditionalGeneration, config, attn, seed)


@dataclass(frozen=True)
class AnyresPrompt:
    """One sample: ids, and per image its crops ``(n_crops, 3, 16, 16)`` and size ``(H, W)``."""

    ids: list[int]
    crops: tuple[torch.Tensor, ...]
    sizes: tuple[tuple[int, int], ...]


def anyres_prompt(num_images: int, size: int = 0, seed: int = 0, text_before: int = 3) -> AnyresPrompt:
    g = torch.Generator().manual_seed(seed)
    ids = [1] + torch.randint(5, 50, (text_before,), generator=g).tolist()
    crops, sizes = [], []
    for i in range(num_images):
        height, width = ANYRES_SIZES[(size + i) % 2]  # 10 or 14 tokens per image
        ids += [IMAGE] * anyres_tokens(height, width) + torch.randint(5, 50, (1,), generator=g).tolist()
        n_crops = 1 + (height // ANYRES_CROP) * (width // ANYRES_CROP)
        crops.append(torch.randn(n_crops, 3, ANYRES_CROP, ANYRES_CROP, generator=g))
        sizes.append((height, width))
    ids += torch.randint(5, 50, (4,), generator=g).tolist()
    return AnyresPrompt(ids, tuple(crops), tuple(sizes))


def anyres_batch(prompts: list[AnyresPrompt], padding_side: str = "left") -> dict:
    """As the LLaVA-NeXT processor returns: crops padded to the most crops of any image, plus image_sizes."""
    inputs = pad_ids(prompts, padding_side)
    crops = [c for p in prompts for c in p.crops]
    if crops:
        most = max(len(c) for c in crops)
        padded = torch.zeros(len(crops), most, 3, ANYRES_CROP, ANYRES_CROP)
        for i, c in enumerate(crops):
            padded[i, : len(c)] = c
        inputs["pixel_values"] = padded
        inputs["image_sizes"] = torch.tensor([s for p in prompts for s in p.sizes])
    return inputs


# ----------------------------------------------------------------------------- InternVL
INTERN_TILE = 16  # 16-px tiles of 4-px patches: 4x4 patches, pixel shuffle 0.5 -> 4 tokens per tile


def tiny_internvl(attn: str = "sdpa", num_layers: int = 6, seed: int = 0, decoder: str = "qwen2"):
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=INTERN_TILE, patch_size=4,
    )
    config = InternVLConfig(
        vision_config=vision, text_config=dict(TEXT, num_hidden_layers=num_layers, model_type=decoder),
        image_token_id=IMAGE, image_seq_length=4,
        tie_word_embeddings=False,  # as the released 2B-and-larger checkpoints; the tests scale lm_head alone
    )
    return _build(InternVLForConditionalGeneration, config, attn, seed)


@dataclass(frozen=True)
class TilePrompt:
    ids: list[int]
    tiles: torch.Tensor  # (n_tiles, 3, 16, 16)


def internvl_prompt(num_images: int, size: int = 0, seed: int = 0, text_before: int = 3) -> TilePrompt:
    """<img> + 4 <IMG_CONTEXT> per tile + </img> per image; 1 or 2 tiles per image (the processor's crops)."""
    g = torch.Generator().manual_seed(seed)
    ids = [1] + torch.randint(5, 50, (text_before,), generator=g).tolist()
    n_tiles = 0
    for i in range(num_images):
        tiles = 1 + (size + i) % 2
        ids += [START] + [IMAGE] * (4 * tiles) + [END]
        n_tiles += tiles
    ids += torch.randint(5, 50, (4,), generator=g).tolist()
    return TilePrompt(ids, torch.randn(n_tiles, 3, INTERN_TILE, INTERN_TILE, generator=g))


def internvl_batch(prompts: list[TilePrompt], padding_side: str = "left") -> dict:
    inputs = pad_ids(prompts, padding_side)
    tiles = torch.cat([p.tiles for p in prompts])
    if len(tiles):
        inputs["pixel_values"] = tiles
    return inputs


# ----------------------------------------------------------------------------- Qwen3-VL
QWEN3_PATCH, QWEN3_TEMPORAL = 4, 2


def tiny_qwen3_vl(attn: str = "sdpa", num_layers: int = 6, seed: int = 0):
    """Qwen3-VL at toy size: vision tower with 2 DeepStack taps (added after decoder layers 0 and 1),
    Qwen3 decoder with QK-norm, interleaved M-RoPE and GQA."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    vision = dict(
        depth=3, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=QWEN3_PATCH,
        temporal_patch_size=QWEN3_TEMPORAL, spatial_merge_size=2, out_hidden_size=64,
        num_position_embeddings=64, deepstack_visual_indexes=[0, 1],
    )
    text = dict(
        TEXT, num_hidden_layers=num_layers, head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True},
    )
    config = Qwen3VLConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE, video_token_id=VIDEO,
        vision_start_token_id=START, vision_end_token_id=END,
    )
    return _build(Qwen3VLForConditionalGeneration, config, attn, seed)


def qwen3_prompt(num_images: int, size: int = 0, seed: int = 0, text_before: int = 3):
    from tests.helpers.models import qwen_prompt

    grids = [(1, 4, 4 + 4 * ((size + i) % 2)) for i in range(num_images)]  # 4 or 8 tokens per image
    return qwen_prompt(image_grids=grids, text_before=text_before, seed=seed)


def qwen3_batch(prompts, padding_side: str = "left") -> dict:
    from tests.helpers.models import qwen_batch

    return qwen_batch(prompts, padding_side)


# ----------------------------------------------------------------------------- Mistral 3
MISTRAL3_PATCH, MISTRAL3_MERGE = 4, 2  # 4-px patches merged 2 x 2: one [IMG] per 8 x 8 pixels
IMG_BREAK, IMG_END = START, END  # text tokens after each row of [IMG] and after the last


def tiny_mistral3(attn: str = "sdpa", num_layers: int = 6, seed: int = 0, decoder: str = "mistral"):
    """Mistral 3 at toy size: Pixtral tower (2-D rotary patches), 2 x 2 patch merger, Mistral decoder
    (no sliding window, as released) with GQA."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    vision = dict(
        model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        head_dim=8, image_size=64, patch_size=MISTRAL3_PATCH,
    )
    text = dict(TEXT, num_hidden_layers=num_layers, model_type=decoder, head_dim=16, sliding_window=None)
    config = Mistral3Config(
        vision_config=vision, text_config=text, image_token_index=IMAGE, spatial_merge_size=MISTRAL3_MERGE,
        vision_feature_layer=-1, tie_word_embeddings=False,  # as released: the tests scale lm_head alone
    )
    return _build(Mistral3ForConditionalGeneration, config, attn, seed)


def mistral3_tokens(height: int, width: int) -> list[int]:
    """An image's placeholders as the Pixtral processor writes them: rows of [IMG], each closed by
    [IMG_BREAK], the last by [IMG_END]."""
    cell = MISTRAL3_PATCH * MISTRAL3_MERGE
    rows, cols = height // cell, width // cell
    ids = []
    for _ in range(rows):
        ids += [IMAGE] * cols + [IMG_BREAK]
    return ids[:-1] + [IMG_END]


@dataclass(frozen=True)
class PixtralPrompt:
    """One sample: ids, and per image its pixels ``(3, H, W)`` at the resized size (multiples of 8)."""

    ids: list[int]
    images: tuple[torch.Tensor, ...]


MISTRAL3_SIZES = ((16, 24), (32, 16))  # (height, width): 2 x 3 and 4 x 2 grids of [IMG]


def mistral3_prompt(num_images: int, size: int = 0, seed: int = 0, text_before: int = 3) -> PixtralPrompt:
    g = torch.Generator().manual_seed(seed)
    ids = [1] + torch.randint(5, 50, (text_before,), generator=g).tolist()
    images = []
    for i in range(num_images):
        height, width = MISTRAL3_SIZES[(size + i) % 2] if i < 2 else (16, 16)
        ids += mistral3_tokens(height, width)
        images.append(torch.randn(3, height, width, generator=g))
    ids += torch.randint(5, 50, (4,), generator=g).tolist()
    return PixtralPrompt(ids, tuple(images))


def mistral3_batch(prompts: list[PixtralPrompt], padding_side: str = "left") -> dict:
    """As the Pixtral processor returns: images zero-padded to the batch's largest, plus their ``image_sizes``."""
    inputs = pad_ids(prompts, padding_side)
    images = [image for p in prompts for image in p.images]
    if images:
        height, width = max(im.shape[1] for im in images), max(im.shape[2] for im in images)
        pixels = torch.zeros(len(images), 3, height, width)
        for i, im in enumerate(images):
            pixels[i, :, : im.shape[1], : im.shape[2]] = im
        inputs["pixel_values"] = pixels
        inputs["image_sizes"] = torch.tensor([list(im.shape[1:]) for im in images])
    return inputs


# ----------------------------------------------------------------------------- the invariant suite's entries
def families(Family) -> dict:
    """``FAMILIES`` entries (`tests.helpers.models.Family`) of the families built here."""

    def anyres(family):
        return lambda attn="sdpa", num_layers=6, seed=0: tiny_llava_next(family, attn, num_layers, seed)

    return {
        "llava_next": Family("llava_next", anyres("llava_next"), anyres_prompt, anyres_batch),
        "llava_onevision": Family("llava_onevision", anyres("llava_onevision"), anyres_prompt, anyres_batch),
        "internvl": Family(
            "internvl", lambda attn="sdpa", num_layers=6, seed=0: tiny_internvl(attn, num_layers, seed),
            internvl_prompt, internvl_batch,
        ),
        "qwen3_vl": Family(
            "qwen3_vl", lambda attn="sdpa", num_layers=6, seed=0: tiny_qwen3_vl(attn, num_layers, seed),
            qwen3_prompt, qwen3_batch,
        ),
        "mistral3": Family(
            "mistral3", lambda attn="sdpa", num_layers=6, seed=0: tiny_mistral3(attn, num_layers, seed),
            mistral3_prompt, mistral3_batch,
        ),
    }
