"""The one builder of LLaVA-shaped configs and random-weight models that the LLaVA-1.5 adapter's
released shape, the tests, the quickstart, the bench and the demo all use.

The released checkpoints' shapes themselves are declared by their family adapters
(`reroute.backbones.base.ReleasedShape`); `reroute.backbones.released_shapes()` gathers them.
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
