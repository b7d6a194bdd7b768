"""Qwen3-VL (``Qwen3VLForConditionalGeneration``): dynamic-resolution vision tower with DeepStack,
Qwen3 decoder (QK-norm) with interleaved 3-D M-RoPE.

DeepStack: the stock decoder adds one vision-tower feature per visual token to the output of
each of its first layers (``deepstack_visual_embeds[i]`` after layer ``i``, at
``visual_pos_masks``). The adapter hands them to the engine as `LayerInjections`; the routed
loop adds them (docs/semantics.md, "Qwen3-VL DeepStack").

Declared: token grids (Qwen2.5-VL's maths: the processor resizes the whole image, 2 x 2 merge), the
answer-box frame (0-1000, Qwen3-VL's relative coordinates), the evaluation protocol (the paper's: its
Qwen grounding prompt, boxes on 0-1000), the released shape. Not declared: a Nüwa tower (Nüwa's stage 1
is defined on Qwen2.5-VL's windowed tower).
"""

from __future__ import annotations

from typing import Any

import torch

from reroute.backbones.base import ReleasedShape, register_backbone
from reroute.backbones.evaluation import EvalProtocol, chat_template_conversation, grid_thw_frames
from reroute.backbones.grids import per_mille, qwen_prompt_grids
from reroute.backbones.qwen2_5_vl import QWEN_GROUNDING_PROMPT
from reroute.backbones.qwen2_vl import QwenVLLayout
from reroute.runtime.adapter import LayerInjections
from reroute.runtime.compat import apply_rotary_pos_emb

#: Qwen3-VL's visual token covers 32 x 32 pixels (16-px patches merged 2 x 2; Qwen2.5-VL's covers 28 x 28)
QWEN3_TOKEN_PIXELS = 32 * 32

#: the paper's Qwen3-VL protocol (run_eval.py MODEL_PRESETS): the Qwen grounding prompt, boxes on 0-1000.
#: The paper fixes no Qwen3-VL resolution; ours carries its iso-576-token convention over to Qwen3-VL's
#: token size: 256 to 576 visual tokens per image, as Qwen2.5-VL at the paper's bounds (docs/semantics.md §9).
QWEN3_VL = EvalProtocol(
    name="qwen3_vl",
    conversation=chat_template_conversation("Qwen3-VL"),
    grounding_prompt=QWEN_GROUNDING_PROMPT,
    resized_frames=grid_thw_frames,
    box_format="per_mille",
    processor_kwargs={"size": {"shortest_edge": 256 * QWEN3_TOKEN_PIXELS, "longest_edge": 576 * QWEN3_TOKEN_PIXELS}},
)


def qwen3_vl_8b() -> Any:
    """Qwen/Qwen3-VL-8B-Instruct: 27-block vision tower (16-px patches, 2x2 merge, DeepStack taps 8/16/24),
    Qwen3-8B-shaped decoder: 36 layers, hidden 4096, MLP 12288, 32 heads / 8 key/value heads of 128, QK-norm."""
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(
        text_config=dict(
            hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
            num_key_value_heads=8, head_dim=128, vocab_size=151936,
        ),
        vision_config=dict(
            depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, patch_size=16,
            out_hidden_size=4096, deepstack_visual_indexes=[8, 16, 24],
        ),
        dtype="bfloat16",
    )


@register_backbone
class Qwen3VLBackbone(QwenVLLayout):
    """The Qwen-VL layout (image and video placeholders, 3-D positions) plus DeepStack."""

    model_classes = ("Qwen3VLForConditionalGeneration",)
    family = "Qwen3-VL"
    model_types = ("qwen3_vl", "qwen3_vl_text")
    grids = staticmethod(qwen_prompt_grids)
    answer_frame = staticmethod(per_mille)
    evaluation = QWEN3_VL
    # a 448 x 448 image: 28 x 28 patches of 16 px, merged 2 x 2
    released = (ReleasedShape("qwen3-vl-8b", qwen3_vl_8b, 196),)
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
