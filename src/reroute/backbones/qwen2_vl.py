"""Qwen2-VL (``Qwen2VLForConditionalGeneration``): dynamic-resolution vision tower, Qwen2 decoder with
3-D M-RoPE; and `QwenVLLayout`, the decoder layout the Qwen-VL adapters share.

Qwen2-VL declares token grids, its answer-box frame (0-1000) and its evaluation protocol (``qwen2_vl``:
the Qwen grounding prompt, boxes on 0-1000, the paper's Qwen resolution; docs/semantics.md §9); no Nüwa
tower (Nüwa's stage 1 is defined on Qwen2.5-VL's windowed tower), no released shape.
"""

from __future__ import annotations

import torch

from reroute.backbones.base import Backbone, register_backbone
from reroute.backbones.evaluation import EvalProtocol, chat_template_conversation, grid_thw_frames
from reroute.backbones.grids import per_mille, qwen_prompt_grids
from reroute.runtime.adapter import Positions
from reroute.runtime.compat import apply_rotary_pos_emb

#: the Qwen grounding prompt (the paper's, run_eval.py MODEL_PRESETS, for Qwen2.5-VL and Qwen3-VL)
QWEN_GROUNDING_PROMPT = "Locate {expression} in this image and output the bbox coordinates in JSON format."

#: Qwen2-VL, which the paper did not run (docs/semantics.md §9): the Qwen grounding prompt, boxes on
#: 0-1000 (Qwen2-VL's own relative coordinates), and Qwen2.5-VL's resolution (the paper's iso-576-token
#: bounds: Qwen2-VL's processor has the same 14-px patches merged 2 x 2)
QWEN2_VL = EvalProtocol(
    name="qwen2_vl",
    conversation=chat_template_conversation("Qwen2-VL"),
    grounding_prompt=QWEN_GROUNDING_PROMPT,
    resized_frames=grid_thw_frames,
    box_format="per_mille",
    harness="the paper's harness (lmms-eval 0.7.1, RefCOCO patch), its Qwen3-VL rules; the paper ran no Qwen2-VL",
    processor_kwargs={"size": {"shortest_edge": 256 * 28 * 28, "longest_edge": 576 * 28 * 28}},
)


class QwenVLLayout(Backbone):
    """The Qwen-VL decoder layout (image and video placeholders, 3-D positions); declares nothing."""

    # The engine's tables are (B, L, head_dim) with the M-RoPE sections merged (by the rotary
    # module since transformers 5.23, by reroute.runtime.compat before), so the plain rotation applies.
    apply_rotary = staticmethod(apply_rotary_pos_emb)

    def visual_token_ids(self, config) -> tuple[int, ...]:
        # images and video frames form one candidate pool (docs/semantics.md §1)
        return (config.image_token_id, config.video_token_id)

    #: rows of positions the stock text model derives when none are given (Qwen3-VL: 4)
    derived_position_rows = 3

    def positions(self, position_ids: torch.Tensor | None, inputs_embeds: torch.Tensor, past_length: int) -> Positions:
        # Mirrors Qwen2_5_VLTextModel.forward: (temporal, height, width) rows, with an
        # optional leading row of text positions used only for the mask.
        batch, length = inputs_embeds.shape[:2]
        rows = self.derived_position_rows
        if position_ids is None:
            position_ids = torch.arange(length, device=inputs_embeds.device) + past_length
            position_ids = position_ids.view(1, 1, -1).expand(rows, batch, -1)
        elif position_ids.ndim == 2:
            position_ids = position_ids[None, ...].expand(rows, position_ids.shape[0], -1)
        if position_ids.ndim == 3 and position_ids.shape[0] == 4:
            return Positions(rope=position_ids[1:], text=position_ids[0])
        return Positions(rope=position_ids, text=None)


@register_backbone
class Qwen2VLBackbone(QwenVLLayout):
    model_classes = ("Qwen2VLForConditionalGeneration",)
    family = "Qwen2-VL"
    model_types = ("qwen2_vl", "qwen2_vl_text")
    grids = staticmethod(qwen_prompt_grids)
    answer_frame = staticmethod(per_mille)
    evaluation = QWEN2_VL
