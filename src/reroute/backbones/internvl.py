"""InternVL (``InternVLForConditionalGeneration``, the ``-hf`` checkpoints): InternViT tiles, pixel
shuffle, MLP projector, Qwen2 (InternVL3) or Qwen3 (InternVL3.5, QK-norm) decoder with 1-D positions.

Declared: the released shape. Not declared: token grids (tiles plus a thumbnail), an evaluation
protocol, an answer-box frame, a Nüwa tower.
"""

from __future__ import annotations

from typing import Any

from reroute.backbones.base import Backbone, ReleasedShape, register_backbone
from reroute.runtime.compat import apply_rotary_pos_emb


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
    # a 448 x 448 image: one tile (no thumbnail for a single tile)
    released = (ReleasedShape("internvl3-8b", internvl3_8b, 256),)

    def visual_token_ids(self, config) -> tuple[int, ...]:
        # every tile's features (images and video frames alike) sit at <IMG_CONTEXT> placeholders;
        # the <img>/</img> delimiters around them are text
        return (config.image_token_id,)
