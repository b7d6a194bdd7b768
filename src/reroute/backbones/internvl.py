"""InternVL (``InternVLForConditionalGeneration``, the ``-hf`` checkpoints): InternViT tiles, pixel
shuffle, MLP projector, Qwen2 (InternVL3) or Qwen3 (InternVL3.5, QK-norm) decoder with 1-D positions.

Declared: the released shape and the evaluation protocol (``internvl``: InternVL's own RefCOCO prompt and
``<box>[[x1, y1, x2, y2]]</box>`` answers on 0-1000, the conversation from the processor's chat template;
docs/evaluation.md). Not declared: token grids (tiles plus a thumbnail), an answer-box frame, a Nüwa tower.
"""

from __future__ import annotations

from typing import Any

from reroute.backbones.base import Backbone, ReleasedShape, register_backbone
from reroute.backbones.evaluation import EvalProtocol, chat_template_conversation
from reroute.runtime.compat import apply_rotary_pos_emb

#: InternVL's own RefCOCO prompt (OpenGVLab/InternVL internvl_chat/eval/refcoco/evaluate_grounding.py);
#: the model answers ``<ref>X</ref><box>[[x1, y1, x2, y2]]</box>`` on 0-1000
INTERNVL_GROUNDING_PROMPT = (
    "Please provide the bounding box coordinate of the region this sentence describes: <ref>{expression}</ref>"
)

#: InternVL as its own evaluation reads RefCOCO: its prompt and pattern, boxes on 0-1000
INTERNVL = EvalProtocol(
    name="internvl",
    conversation=chat_template_conversation("InternVL"),
    grounding_prompt=INTERNVL_GROUNDING_PROMPT,
    box_format="per_mille",
    box_parser="internvl",
    harness="InternVL's RefCOCO evaluation (REC); lmms-eval 0.7.1 (POPE, GQA, MME, MMBench)",
)


def internvl3_8b() -> Any:
    """OpenGVLab/InternVL3-8B-hf: InternViT-300M (448-px tiles of 14-px patches, pixel shuffle 0.5: 256 tokens
    per tile), Qwen2.5-7B decoder (28 layers, hidden 3584, MLP 18944, 28 heads / 4 key/value heads)."""
    from transformers import InternVLConfig

    return InternVLConfig(
        text_config=dict(
            model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
            num_attention_heads=28, num_key_value_heads=4, vocab_size=151674,
        ),
        vision_config=dict(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
            image_size=448, patch_size=14,
        ),
        dtype="bfloat16",
    )


@register_backbone
class InternVLBackbone(Backbone):
    model_classes = ("InternVLForConditionalGeneration",)
    family = "InternVL"
    model_types = ("internvl",)
    apply_rotary = staticmethod(apply_rotary_pos_emb)
    evaluation = INTERNVL
    # a 448 x 448 image: one tile (no thumbnail for a single tile)
    released = (ReleasedShape("internvl3-8b", internvl3_8b, 256),)

    def visual_token_ids(self, config) -> tuple[int, ...]:
        # every tile's features (images and video frames alike) sit at <IMG_CONTEXT> placeholders;
        # the <img>/</img> delimiters around them are text
        return (config.image_token_id,)
