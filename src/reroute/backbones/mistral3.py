"""Mistral 3 (``Mistral3ForConditionalGeneration``, Mistral Small 3.1 / 3.2): Pixtral vision tower with
2-D rotary patches, a 2 x 2 patch merger, Mistral decoder with 1-D positions.

The processor resizes each image (aspect kept, each side a multiple of the merged cell, never
above ``longest_edge``) and writes one ``[IMG]`` per merged cell, row by row, each row closed by
``[IMG_BREAK]`` and the last by ``[IMG_END]``. Only ``[IMG]`` positions hold visual features: the
break and end tokens are text. The decoder is Llama's layout; a Mistral decoder with
``sliding_window`` set is refused by `reroute.backbones.refused.decoder_refusal`, and other decoders
(Ministral 3's position-scaled queries, Mistral Large 3's) are refused here, untested.

Declared: token grids (the ``[IMG]`` positions are a raster over the whole resized image), the
released shape. Not declared: an evaluation protocol, an answer-box frame, a Nüwa tower.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from reroute.backbones.base import Backbone, ReleasedShape, register_backbone
from reroute.backbones.grids import TokenGrid, whole_image_grids
from reroute.runtime.compat import apply_rotary_pos_emb

#: decoders the tiny-model suite runs (tests/helpers/models_more.py)
TESTED_DECODERS = ("mistral",)


def mistral3_grids(config, processor, inputs: dict, image_sizes: Sequence[tuple[int, int]], sample: int = 0) -> list[TokenGrid]:
    """One grid per image of sample ``sample`` of a processed batch, spanning the whole original image
    (the processor resizes, it does not crop).

    The processor's ``inputs["image_sizes"]`` (resized ``(height, width)`` per image of the batch, in
    order) give each grid's shape in ``patch_size x spatial_merge_size`` cells; ``image_sizes`` are the
    sample's original ``(width, height)``, in prompt order.
    """
    cell = config.vision_config.patch_size * config.spatial_merge_size
    shapes = [(int(h) // cell, int(w) // cell) for h, w in torch.as_tensor(inputs["image_sizes"]).tolist()]
    # images belong to the samples in order: each sample's [IMG] count covers its own images
    counts = (torch.as_tensor(inputs["input_ids"]) == config.image_token_id).sum(dim=1).tolist()
    first = 0
    for b in range(sample):
        first += _images_covering(shapes[first:], counts[b])
    mine = shapes[first : first + _images_covering(shapes[first:], counts[sample])]
    if len(mine) != len(image_sizes):
        raise ValueError(f"sample {sample} has {len(mine)} images but {len(image_sizes)} image sizes: give one size per image")
    positions = torch.nonzero(torch.as_tensor(inputs["input_ids"][sample]) == config.image_token_id).flatten().tolist()
    return whole_image_grids(positions, mine, image_sizes)


def _images_covering(shapes: Sequence[tuple[int, int]], tokens: int) -> int:
    """How many of the next images' ``rows x cols`` grids make up ``tokens`` ``[IMG]`` tokens."""
    count, total = 0, 0
    while total < tokens:
        if count == len(shapes):
            raise ValueError(f"the prompt has {tokens} [IMG] tokens but its images' sizes give {total}")
        total += shapes[count][0] * shapes[count][1]
        count += 1
    if total != tokens:
        raise ValueError(f"the prompt has {tokens} [IMG] tokens but its images' sizes give {total}")
    return count


def mistral_small_3_1_24b() -> Any:
    """mistralai/Mistral-Small-3.1-24B-Instruct-2503: Pixtral tower (24 layers, hidden 1024, 14-px patches,
    2 x 2 merge), Mistral decoder: 40 layers, hidden 5120, MLP 32768, 32 heads / 8 key/value heads of 128,
    no sliding window; bfloat16 as released."""
    from transformers import Mistral3Config

    return Mistral3Config(
        text_config=dict(
            model_type="mistral", hidden_size=5120, intermediate_size=32768, num_hidden_layers=40,
            num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=131072,
            max_position_embeddings=131072, rope_theta=1000000000.0, sliding_window=None,
        ),
        vision_config=dict(
            model_type="pixtral", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
            num_attention_heads=16, head_dim=64, patch_size=14, image_size=1540,
        ),
        spatial_merge_size=2,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )


@register_backbone
class Mistral3Backbone(Backbone):
    model_classes = ("Mistral3ForConditionalGeneration",)
    family = "Mistral 3"
    model_types = ("mistral3",)
    apply_rotary = staticmethod(apply_rotary_pos_emb)
    grids = staticmethod(mistral3_grids)
    # a 448 x 448 image: 16 x 16 merged cells of 28 px (448 is below longest_edge, so not resized)
    released = (ReleasedShape("mistral-small-3.1-24b", mistral_small_3_1_24b, 256),)

    @classmethod
    def refusal(cls, model: Any) -> str | None:
        config = getattr(model, "config", None)
        if config is None:  # a class without its config says nothing about the decoder
            return None
        decoder = config.get_text_config().model_type
        if decoder in TESTED_DECODERS:
            return None
        return (
            f"reroute supports {type(model).__name__} with a Mistral decoder (Mistral Small 3.1 / 3.2), "
            f"not a {decoder} one: its layers are not tested against the routed loop"
        )

    def visual_token_ids(self, config) -> tuple[int, ...]:
        # only [IMG] holds a feature; [IMG_BREAK] / [IMG_END] are text tokens
        return (config.image_token_id,)
