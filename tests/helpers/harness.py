"""Run the engine and the reference on the same inputs (backbone-agnostic)."""

from __future__ import annotations

import torch

import reroute
from tests.helpers.reference import reference_forward


@torch.no_grad()
def decoder_inputs(model, inputs: dict) -> dict:
    """The merged embeddings and positions the VLM hands its decoder (captured from a vanilla run)."""
    captured = {}

    def hook(module, args, kwargs):
        captured.update(kwargs)

    text_model = model.model.language_model
    handle = text_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(**inputs, use_cache=False)
    finally:
        handle.remove()
    return captured


def rotary_positions(captured: dict, b: int, length: int, offset: int) -> torch.Tensor:
    """Rotary positions of sample ``b`` (its real tokens only), shaped for the model's rotary module."""
    pos = captured.get("position_ids")
    if pos is None:
        return torch.arange(length)[None]
    if pos.ndim == 3:  # M-RoPE (3 or 4 rows); the rotary module takes the last 3
        return pos[-3:, b : b + 1, offset : offset + length]
    return pos[b : b + 1, offset : offset + length]


def sample_injections(captured: dict, b: int, offset: int, length: int) -> list | None:
    """Qwen3-VL's DeepStack features of sample ``b`` as the reference takes them: per layer an
    ``(length, D)`` tensor, the feature at each visual position and zero elsewhere (None for other families)."""
    visual, features = captured.get("visual_pos_masks"), captured.get("deepstack_visual_embeds")
    if visual is None or features is None:
        return None
    embeds = captured["inputs_embeds"]
    out = []
    for feature in features:
        full = torch.zeros_like(embeds)
        full[visual] = feature.to(embeds.dtype)
        out.append(full[b, offset : offset + length])
    return out


@torch.no_grad()
def reference_logits(model, inputs: dict, visual_mask: torch.Tensor, config, extra_tokens: torch.Tensor | None = None):
    """Per-sample reference logits over each sample's real tokens; list of (L_b, V) tensors and decisions."""
    captured = decoder_inputs(model, inputs)
    embeds = captured["inputs_embeds"]
    mask = inputs["attention_mask"].bool()
    text_model = model.model.language_model
    results = []
    for b in range(embeds.shape[0]):
        real = torch.nonzero(mask[b]).flatten()
        offset, length = int(real[0]), len(real)
        e = embeds[b, offset : offset + length]
        pos = rotary_positions(captured, b, length, offset)
        injections = sample_injections(captured, b, offset, length)
        hidden, decisions = reference_forward(
            text_model, pos, e, visual_mask[b, offset : offset + length].tolist(), config, injections=injections
        )
        results.append((model.lm_head(hidden), decisions))
    return results


def visual_mask(model, inputs: dict) -> torch.Tensor:
    from reroute.backbones import backbone_for

    return backbone_for(model).visual_mask(model.config, inputs["input_ids"])


def routed(model, config, inputs: dict, instruction_encoder=None, **kwargs):
    with reroute.apply(model, config, instruction_encoder=instruction_encoder) as handle:
        with torch.no_grad():
            out = model(**inputs, **kwargs)
    return out, handle.trace
