"""VisionZip's reduction of one image (docs/semantics.md §22): dominant tokens by the CLS attention,
contextual tokens merged from the rest.

Inputs per image, all from the CLIP layer whose output LLaVA takes (`tower_inputs`):

- ``attention`` ``(N,)``: the CLS query's attention over the ``N`` patches, summed over heads
  (the softmax over all ``1 + N`` keys, CLS included);
- ``keys`` ``(N, h)``: each patch's key (``k_proj`` of the normed layer input), mean over heads;
- ``features`` ``(N, C)``: the layer's output patches (what the projector takes).

Steps: the ``dominant`` patches of highest attention pass unchanged. Of the others (in raster order),
``contextual`` targets are taken at a uniform stride ``max(1, R // contextual)`` from the first
(``R`` the number of others); every other patch joins the target whose key is most cosine-similar,
and a target becomes ``x_target + mean(x_joined)`` (``x_target`` when none joined). Ties go to the
lower index. Kept: the dominant patches and the targets, at their own positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TowerInputs:
    """VisionZip's inputs for one image: ``attention`` ``(N,)`` float32, ``keys`` ``(N, h)``, ``features`` ``(N, C)``."""

    attention: torch.Tensor
    keys: torch.Tensor
    features: torch.Tensor


def cls_attention_and_keys(layer: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(attention (B, N) float32, keys (B, N, h))`` of one ``CLIPEncoderLayer`` from its input ``hidden`` ``(B, 1 + N, C)``.

    One query row (the CLS token's) is computed, not the layer's ``(1 + N)^2`` attention map.
    """
    attn = layer.self_attn
    batch, length, _ = hidden.shape
    x = layer.layer_norm1(hidden)
    q = attn.q_proj(x[:, :1]).view(batch, attn.num_heads, attn.head_dim).float()  # (B, H, hd)
    k = attn.k_proj(x).view(batch, length, attn.num_heads, attn.head_dim)  # (B, 1+N, H, hd)
    logits = torch.einsum("bhd,bnhd->bhn", q, k.float()) * attn.scale
    attention = logits.softmax(dim=-1)[:, :, 1:].sum(dim=1)
    return attention, k.mean(dim=2)[:, 1:]


def visionzip_select(image: TowerInputs, dominant: int, contextual: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept (K,) ascending, tokens (K, C))`` of one image; ``K = dominant + min(contextual, N - dominant)``."""
    num_tokens = image.features.shape[0]
    if not 0 <= dominant <= num_tokens or contextual < 0:
        raise ValueError(f"VisionZip keeps 0..{num_tokens} dominant of {num_tokens} tokens and >= 0 contextual, got {dominant}, {contextual}")
    # a stable descending sort: the top `dominant`, ties to the lower index
    order = torch.sort(image.attention, descending=True, stable=True).indices
    is_dominant = torch.zeros(num_tokens, dtype=torch.bool, device=order.device)
    is_dominant[order[:dominant]] = True
    rest = torch.nonzero(~is_dominant).flatten()  # raster order
    kept = [torch.nonzero(is_dominant).flatten()]
    tokens = image.features.clone()
    if contextual > 0 and len(rest) > 0:
        step = max(1, len(rest) // contextual)
        local = torch.arange(0, len(rest), step, device=rest.device)[:contextual]
        is_target = torch.zeros(len(rest), dtype=torch.bool, device=rest.device)
        is_target[local] = True
        targets, joining = rest[is_target], rest[~is_target]
        if len(joining) > 0:
            keys = image.keys.float()
            keys = keys / keys.norm(dim=-1, keepdim=True)
            assign = (keys[joining] @ keys[targets].t()).argmax(dim=1)  # first of equal maxima: the lower target
            x = image.features
            sums = torch.zeros(len(targets), x.shape[-1], dtype=x.dtype, device=x.device).index_add_(0, assign, x[joining])
            counts = torch.bincount(assign, minlength=len(targets)).clamp(min=1).to(x.dtype)
            tokens[targets] = x[targets] + sums / counts[:, None]
        kept.append(targets)
    kept = torch.sort(torch.cat(kept)).values
    return kept, tokens[kept]


@torch.no_grad()
def tower_inputs(model: nn.Module, pixel_values: torch.Tensor) -> list[TowerInputs]:
    """VisionZip's inputs of each image of a ``LlavaForConditionalGeneration`` (CLIP tower, CLS first).

    The layer is the one whose output LLaVA takes (``vision_feature_layer``, -2 on LLaVA-1.5, as
    VisionZip's code hard-codes); its CLS row and keys are recomputed from its input.
    """
    config = model.config
    tower = model.model.vision_tower
    layers = getattr(tower, "vision_model", tower).encoder.layers
    hidden_states = tower(pixel_values.to(tower.dtype), output_hidden_states=True).hidden_states  # depth + 1 states
    selected = config.vision_feature_layer % (len(layers) + 1)
    attention, keys = cls_attention_and_keys(layers[selected - 1], hidden_states[selected - 1])
    features = hidden_states[selected][:, 1:]
    return [TowerInputs(attention[b], keys[b], features[b]) for b in range(len(features))]
