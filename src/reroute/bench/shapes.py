"""Model shapes, the random-weight models and inputs `reroute bench` times, and its configurations."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from reroute.budgets import preset as budget_preset
from reroute.config import RoutingConfig
from reroute.backbones import released_shapes
from reroute.backbones.released import build_llava, llava_config

# --------------------------------------------------------------------------------------
# model shapes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchShape:
    """A LLaVA-1.5-shaped model: Llama decoder dimensions and a CLIP tower."""

    name: str
    description: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    vision: dict[str, int]
    dtype_cpu: str = "float32"
    dtype_cuda: str = "float16"


def shape_of_released(name: str, description: str, **overrides: Any) -> BenchShape:
    """The `BenchShape` of a released LLaVA config its adapter declares (`reroute.backbones.released_shapes`,
    one source for its dimensions)."""
    config = released_shapes()[name].config()
    text, vision = config.text_config, config.vision_config
    return BenchShape(
        name=name,
        description=description,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_layers=text.num_hidden_layers,
        num_heads=text.num_attention_heads,
        num_kv_heads=text.num_key_value_heads,
        vocab_size=text.vocab_size,
        vision={
            key: getattr(vision, key)
            for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                        "image_size", "patch_size", "projection_dim")
        },
        **overrides,
    )


BENCH_SHAPES: dict[str, BenchShape] = {
    "llava-1.5-narrow": BenchShape(
        name="llava-1.5-narrow",
        description=(
            "LLaVA-1.5-7B at 1/8 width: its 32 decoder layers, 576 visual tokens per image, hidden 512, "
            "MLP 1376, 8 heads, vocab 32064; a 2-layer CLIP tower on 48 px images with 2 px patches"
        ),
        hidden_size=512,
        intermediate_size=1376,
        num_layers=32,
        num_heads=8,
        num_kv_heads=8,
        vocab_size=32064,
        vision=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=48, patch_size=2, projection_dim=32,
        ),
    ),
    "tiny": BenchShape(
        name="tiny",
        description="a toy LLaVA for smoke tests: 12 layers, hidden 64, GQA (4 heads, 2 key/value heads), 16 visual tokens per image",
        hidden_size=64,
        intermediate_size=128,
        num_layers=12,
        num_heads=4,
        num_kv_heads=2,
        vocab_size=32064,
        vision=dict(
            hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            image_size=8, patch_size=2, projection_dim=16,
        ),
    ),
}
BENCH_SHAPES["llava-1.5-7b"] = shape_of_released(
    "llava-1.5-7b",
    "LLaVA-1.5-7B: Vicuna-7B decoder, CLIP ViT-L/14 at 336 px (576 visual tokens)",
    dtype_cpu="bfloat16",
)

IMAGE_TOKEN_ID = 32000  # llava-hf's <image>
PAD_TOKEN_ID = 32001  # llava-hf's <pad>


def build_model(
    shape: BenchShape | str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    attn: str = "sdpa",
    num_layers: int | None = None,
    seed: int = 0,
):
    """A ``LlavaForConditionalGeneration`` of ``shape`` with random weights, built on ``device``."""
    shape = BENCH_SHAPES[shape] if isinstance(shape, str) else shape
    device = torch.device(device)
    if dtype is None:
        dtype = getattr(torch, shape.dtype_cuda if device.type == "cuda" else shape.dtype_cpu)
    text = dict(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=num_layers or shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=32768,
        pad_token_id=PAD_TOKEN_ID,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = llava_config(
        text,
        shape.vision,
        image_token_id=IMAGE_TOKEN_ID,
        vision_feature_select_strategy="default",  # drop CLS: (image / patch)^2 tokens per image
        vision_feature_layer=-2,
    )
    return build_llava(config, seed=seed, attn=attn, dtype=dtype, device=device)


def visual_tokens_per_image(model) -> int:
    vision = model.config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


def make_inputs(
    model,
    *,
    num_images: int = 1,
    text_lengths: Sequence[int] = (64,),
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A left-padded batch, one sample per text length: BOS, text, the images (each followed by a
    newline-like token), more text, so each sample has ``text_length`` non-visual tokens."""
    g = torch.Generator().manual_seed(seed)
    per_image = visual_tokens_per_image(model)
    samples = []
    for text_length in text_lengths:
        body = text_length - 1 - num_images  # BOS and one separator per image
        if body < 1:
            raise ValueError(f"text length {text_length} is too short for {num_images} images: give at least {num_images + 2}")
        words = torch.randint(100, IMAGE_TOKEN_ID, (body,), generator=g).tolist()
        before, after = words[: body // 2], words[body // 2 :]
        ids = [1, *before]
        for _ in range(num_images):
            ids += [IMAGE_TOKEN_ID] * per_image + [13]
        samples.append(ids + after)
    length = max(len(s) for s in samples)
    input_ids = torch.full((len(samples), length), PAD_TOKEN_ID, dtype=torch.long)
    attention_mask = torch.zeros(len(samples), length, dtype=torch.long)
    for b, ids in enumerate(samples):
        input_ids[b, length - len(ids) :] = torch.tensor(ids)
        attention_mask[b, length - len(ids) :] = 1
    vision = model.config.vision_config
    device, dtype = model.device, model.dtype
    pixels = torch.randn(len(samples) * num_images, 3, vision.image_size, vision.image_size, generator=g)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "pixel_values": pixels.to(device, dtype),
    }


def visual_count(model, inputs: dict) -> list[int]:
    """Visual tokens per sample of a batch."""
    return (inputs["input_ids"] == model.config.image_token_id).sum(dim=1).tolist()


# --------------------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """One row of the table: a method at a tier (``config=None``: vanilla)."""

    name: str
    method: str
    tier: float | None
    config: RoutingConfig | None


def bench_configs(
    model,
    tiers: Sequence[float] = (192, 128, 64),
    *,
    ratios: str = "solved",
    reroute_preset: str = "reroute_vs_pdrop",
    overhead: bool = True,
) -> list[BenchConfig]:
    """Vanilla, the keep-1.0 overhead check, then per tier: FastV and PDrop (remove), reroute
    per-layer and stage-wise (``reroute_preset``'s schedule, the same for both executions)."""
    rows = [BenchConfig("vanilla", "vanilla", None, None)]
    if overhead:
        layers = budget_preset(reroute_preset, tiers[0] if tiers else 128, model=model).decision_layers
        keep_all = RoutingConfig("reroute", layers, (1.0,) * len(layers))
        rows.append(BenchConfig("reroute keep=1.0", "overhead", None, keep_all))
    for tier in tiers:
        fastv = budget_preset("fastv", tier, model=model, ratios=ratios)
        pdrop = budget_preset("pdrop", tier, model=model, ratios=ratios)
        ours = budget_preset(reroute_preset, tier, model=model, ratios=ratios)
        rows += [
            BenchConfig(f"fastv remove @{tier:g}", "fastv", tier, fastv),
            BenchConfig(f"pdrop remove @{tier:g}", "pdrop", tier, pdrop),
            BenchConfig(f"reroute per-layer @{tier:g}", "reroute per-layer", tier,
                        dataclasses.replace(ours, execution="per_layer")),
            BenchConfig(f"reroute stage-wise @{tier:g}", "reroute stage-wise", tier,
                        dataclasses.replace(ours, execution="stagewise")),
        ]  # fmt: skip
    return rows
