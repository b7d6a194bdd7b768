"""Nüwa stage 1, what the vision towers give it: saliency, similarity features and ``x`` per image.

One forward of the stock tower, in whatever attention implementation it was loaded with;
the attention needed for saliency is recomputed for the one layer that matters from that
layer's own input, norm and projections (float32), so no layer's full attention map is
materialised by the tower and nothing is switched to eager.

Layer-range scaling for towers shallower than the real ones (tests): a range ``a..b`` given
for a tower of depth ``D0`` becomes ``floor(a * D / D0) .. floor(b * D / D0)`` for depth ``D``
(identity at ``D = D0``). LLaVA-1.5: hidden states 16..24 of CLIP's 24 layers (hidden state
``i`` is layer ``i``'s output, 1-based; 0 is the embeddings). Qwen2.5-VL: outputs of blocks
7..23 (0-based) of 32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from reroute.runtime.compat import apply_rotary_pos_emb_vision, vision_window_index

#: queries per chunk when summing attention columns (memory: heads x chunk x L floats; 16 x 256 x 16k = 256 MiB)
QUERY_CHUNK = 256


@dataclass(frozen=True)
class VisionFeatures:
    """One image's stage-1 inputs, in raster order of its grid.

    saliency: ``(N,)`` float32.
    similarity: ``(N, C)`` features ``f`` whose cosine decides what merges.
    features: ``(N, D)`` ``x``, what anchors carry and merge (LLaVA: before the projector;
        Qwen: after the merger, the decoder's input).
    grid: ``(H, W)`` with ``H * W = N``.
    """

    saliency: torch.Tensor
    similarity: torch.Tensor
    features: torch.Tensor
    grid: tuple[int, int]


def scaled_range(first: int, last: int, reference_depth: int, depth: int) -> range:
    """``first..last`` (inclusive) of a ``reference_depth``-deep tower, scaled to ``depth`` (module docstring)."""
    return range(first * depth // reference_depth, last * depth // reference_depth + 1)


# ----------------------------------------------------------------------------- LLaVA-1.5 (CLIP)
def clip_cls_attention(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` float32: the CLS query's attention over the patch keys in one CLIP layer, summed over heads.

    Args:
        layer: a ``CLIPEncoderLayer`` (its ``layer_norm1`` and ``self_attn`` q/k projections).
        hidden: ``(B, 1 + N, C)`` the layer's input, CLS first.

    The softmax runs over all ``1 + N`` keys (CLS included, as the layer attends); the CLS
    column is then dropped, so a row sums to less than the number of heads.
    """
    attn = layer.self_attn
    batch, length, _ = hidden.shape
    x = layer.layer_norm1(hidden)
    q = attn.q_proj(x[:, :1]).view(batch, attn.num_heads, attn.head_dim).float()  # (B, H, hd)
    k = attn.k_proj(x).view(batch, length, attn.num_heads, attn.head_dim).float()  # (B, 1+N, H, hd)
    logits = torch.einsum("bhd,bnhd->bhn", q, k) * attn.scale
    return logits.softmax(dim=-1)[:, :, 1:].sum(dim=1)


@torch.no_grad()
def llava_vision_features(
    model: nn.Module, pixel_values: torch.Tensor, similarity_layers: range | None = None
) -> list[VisionFeatures]:
    """Stage-1 inputs of each image of a ``LlavaForConditionalGeneration``.

    Args:
        model: the LLaVA model (CLIP tower at ``model.model.vision_tower``).
        pixel_values: ``(B, 3, S, S)`` processed images.
        similarity_layers: hidden-state indices averaged into ``f``; default 16..24 scaled to
            the tower's depth.

    Saliency: the CLS row of the layer whose output LLaVA takes (``vision_feature_layer``,
    -2 for LLaVA-1.5: the penultimate layer), computed from that layer's input. ``x``: that
    layer's output without CLS (``vision_feature_select_strategy="default"``).
    """
    config = model.config
    layer_index = config.vision_feature_layer
    if not isinstance(layer_index, int):
        raise ValueError(f"Nüwa needs one vision_feature_layer, got {layer_index}; load the model with an int vision_feature_layer")
    if config.vision_feature_select_strategy != "default":
        raise ValueError(
            f"Nüwa needs vision_feature_select_strategy='default' (CLS dropped), got {config.vision_feature_select_strategy!r}; "
            "load the model with the default strategy"
        )
    tower = model.model.vision_tower
    # transformers 5.24's CLIPVisionModel holds the encoder itself; earlier releases wrapped it in .vision_model
    layers = getattr(tower, "vision_model", tower).encoder.layers
    depth = len(layers)
    hidden_states = tower(pixel_values.to(tower.dtype), output_hidden_states=True).hidden_states  # depth + 1 states
    selected = layer_index % (depth + 1)
    if selected == 0:
        raise ValueError("Nüwa needs a vision_feature_layer after a CLIP layer (the embeddings have no attention); use -2")
    saliency = clip_cls_attention(layers[selected - 1], hidden_states[selected - 1])
    if similarity_layers is None:
        similarity_layers = scaled_range(16, 24, 24, depth)
    similarity = torch.stack([hidden_states[i][:, 1:] for i in similarity_layers]).mean(dim=0)
    features = hidden_states[selected][:, 1:]
    side = math.isqrt(features.shape[1])
    if side * side != features.shape[1]:
        raise ValueError(f"Nüwa needs a square patch grid, got {features.shape[1]} patches; use LLaVA-1.5's square images")
    return [VisionFeatures(saliency[b], similarity[b], features[b], (side, side)) for b in range(len(features))]


# ----------------------------------------------------------------------------- Qwen2.5-VL
def attention_column_sums(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """``(H, L)`` float32: per head, the attention each key receives summed over all queries (full, unmasked).

    q, k: ``(H, L, hd)``. Queries go in chunks of ``QUERY_CHUNK`` rows so no ``L x L`` buffer
    per head is built.
    """
    q, k = q.float(), k.float()
    sums = torch.zeros(k.shape[:2], dtype=torch.float32, device=k.device)
    for start in range(0, q.shape[1], QUERY_CHUNK):
        logits = q[:, start : start + QUERY_CHUNK] @ k.transpose(1, 2) * scale
        sums += logits.softmax(dim=-1).sum(dim=1)
    return sums


def qwen_block_received_attention(block: nn.Module, hidden: torch.Tensor, cu_seqlens: torch.Tensor, position_embeddings) -> torch.Tensor:
    """``(L,)`` float32: attention each token receives in a Qwen2.5-VL vision block (head mean, column sum).

    Args:
        block: a ``Qwen2_5_VLVisionBlock`` (its ``norm1`` and ``attn.qkv``).
        hidden: ``(L, C)`` the block's input (window order, as inside the tower).
        cu_seqlens: the segment boundaries the block attends within (per frame for a
            full-attention block, per window otherwise).
        position_embeddings: the rotary ``(cos, sin)`` the block received.
    """
    attn = block.attn
    length = hidden.shape[0]
    qkv = attn.qkv(block.norm1(hidden)).reshape(length, 3, attn.num_heads, -1).permute(1, 0, 2, 3)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb_vision(qkv[0].float(), qkv[1].float(), cos, sin)  # (L, H, hd)
    q, k = q.transpose(0, 1), k.transpose(0, 1)
    bounds = cu_seqlens.tolist()
    columns = [attention_column_sums(q[:, a:b], k[:, a:b], attn.scaling) for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.cat(columns, dim=1).mean(dim=0)


@torch.no_grad()
def qwen_vision_features(
    model: nn.Module, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, similarity_blocks: range | None = None
) -> list[VisionFeatures]:
    """Stage-1 inputs of each image of a ``Qwen2_5_VLForConditionalGeneration``.

    Args:
        model: the Qwen2.5-VL model (tower at ``model.model.visual``).
        pixel_values: ``(sum t*h*w, patch_dim)`` flattened patches, as the processor returns.
        image_grid_thw: ``(num_images, 3)`` ``(t, h, w)`` in patches; still images (``t = 1``).
        similarity_blocks: blocks whose outputs are averaged (then merged) into ``f``; default
            7..23 scaled to the tower's depth.

    Saliency: the attention each token receives in the last block (head mean, column sum,
    float32), averaged over the 4 patches of each merged token. The tower runs in window
    order; every output here is mapped back to raster order of the merged grid
    ``(h / 2, w / 2)``. ``x``: the tower's own merged output.
    """
    if bool((image_grid_thw[:, 0] != 1).any()):
        raise ValueError(
            f"Nüwa stage 1 handles still images (t = 1), got grids {image_grid_thw.tolist()}; run videos without Nüwa"
        )
    visual = model.model.visual
    blocks = visual.blocks
    if similarity_blocks is None:
        similarity_blocks = scaled_range(7, 23, 32, len(blocks))
    captured: dict = {}
    summed: list[torch.Tensor] = []

    def grab_last_input(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]
        captured["cu_seqlens"] = kwargs["cu_seqlens"]
        captured["position_embeddings"] = kwargs["position_embeddings"]

    def accumulate(module, args, kwargs, output):
        out = output.float()
        if summed:
            summed[0] += out
        else:
            summed.append(out.clone())

    hooks = [blocks[-1].register_forward_pre_hook(grab_last_input, with_kwargs=True)]
    hooks += [blocks[i].register_forward_hook(accumulate, with_kwargs=True) for i in similarity_blocks]
    try:
        # the stock get_image_features casts the patches to the tower's dtype first
        merged = visual(pixel_values.type(visual.dtype), grid_thw=image_grid_thw).pooler_output  # (sum N, D) raster order
    finally:
        for hook in hooks:
            hook.remove()

    window_index = vision_window_index(visual, image_grid_thw)
    raster = torch.argsort(window_index.to(merged.device))  # raster position r sits at window position raster[r]
    unit = visual.spatial_merge_unit
    mean_state = (summed[0] / len(similarity_blocks)).to(merged.dtype)
    similarity = visual.merger(mean_state)[raster]
    received = qwen_block_received_attention(blocks[-1], captured["hidden"], captured["cu_seqlens"], captured["position_embeddings"])
    saliency = received.view(-1, unit).mean(dim=1)[raster]

    out = []
    start = 0
    for _, h, w in image_grid_thw.tolist():
        grid = (h // visual.spatial_merge_size, w // visual.spatial_merge_size)
        stop = start + grid[0] * grid[1]
        out.append(VisionFeatures(saliency[start:stop], similarity[start:stop], merged[start:stop], grid))
        start = stop
    return out
