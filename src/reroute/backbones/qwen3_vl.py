"""Qwen3-VL (``Qwen3VLForConditionalGeneration``): dynamic-resolution vision tower with DeepStack,
Qwen3 decoder (QK-norm) with interleaved 3-D M-RoPE.

DeepStack: the stock decoder adds one vision-tower feature per visual token to the output of
each of its first layers (``deepstack_visual_embeds[i]`` after layer ``i``, at
``visual_pos_masks``). The adapter hands them to the engine as `LayerInjections`; the routed
loop adds them (docs/semantics.md, "Qwen3-VL DeepStack").
"""

from __future__ import annotations

import torch

from reroute.backbones.base import Backbone, LayerInjections, Positions
from reroute.compat import apply_rotary_pos_emb


class Qwen3VLBackbone(Backbone):
    model_classes = ("Qwen3VLForConditionalGeneration",)
    # The interleaved M-RoPE is composed inside the model's rotary module: cos/sin come out
    # (B, L, head_dim) and the plain rotation applies.
    apply_rotary = staticmethod(apply_rotary_pos_emb)

    def visual_token_ids(self, config) -> tuple[int, ...]:
        return (config.image_token_id, config.video_token_id)

    def pop_injections(self, kwargs: dict, inputs_embeds: torch.Tensor) -> LayerInjections | None:
        visual = kwargs.pop("visual_pos_masks", None)
        features = kwargs.pop("deepstack_visual_embeds", None)
        if visual is None or features is None:
            return None
        visual = visual.to(inputs_embeds.device)
        after_layer = []
        for feature in features:
            # the whole call's length: inside generate() the engine may get only the prompt's part of it
            full = inputs_embeds.new_zeros(*visual.shape, inputs_embeds.shape[-1])
            full[visual] = feature.to(inputs_embeds.device, inputs_embeds.dtype)
            after_layer.append(full)
        return LayerInjections(visual=visual, after_layer=tuple(after_layer))

    def positions(self, position_ids: torch.Tensor | None, inputs_embeds: torch.Tensor, past_length: int) -> Positions:
        # Mirrors Qwen3VLTextModel.forward: 4 rows (text, temporal, height, width) when derived here.
        batch, length = inputs_embeds.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(length, device=inputs_embeds.device) + past_length
            position_ids = position_ids.view(1, 1, -1).expand(4, batch, -1)
        elif position_ids.ndim == 2:
            position_ids = position_ids[None, ...].expand(4, position_ids.shape[0], -1)
        if position_ids.ndim == 3 and position_ids.shape[0] == 4:
            return Positions(rope=position_ids[1:], text=position_ids[0])
        return Positions(rope=position_ids, text=None)
