"""Qwen3-VL (``Qwen3VLForConditionalGeneration``): dynamic-resolution vision tower with DeepStack,
Qwen3 decoder (QK-norm) with interleaved 3-D M-RoPE.

DeepStack: the stock decoder adds one vision-tower feature per visual token to the output of
each of its first layers (``deepstack_visual_embeds[i]`` after layer ``i``, at
``visual_pos_masks``). The adapter hands them to the engine as `LayerInjections`; the routed
loop adds them (docs/semantics.md, "Qwen3-VL DeepStack").
"""

from __future__ import annotations

import torch

from reroute.runtime.adapter import LayerInjections
from reroute.backbones.qwen2_vl import Qwen2VLBackbone
from reroute.runtime.compat import apply_rotary_pos_emb


class Qwen3VLBackbone(Qwen2VLBackbone):
    """Qwen2-VL's layout (image and video placeholders, 3-D positions) plus DeepStack."""

    model_classes = ("Qwen3VLForConditionalGeneration",)
    # The interleaved M-RoPE is composed inside the model's rotary module: cos/sin come out
    # (B, L, head_dim) and the plain rotation applies.
    apply_rotary = staticmethod(apply_rotary_pos_emb)
    # Qwen3VLTextModel.forward derives 4 rows (text, temporal, height, width) when given none.
    derived_position_rows = 4

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
