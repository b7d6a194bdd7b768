"""CDPruner's published relevance (docs/semantics.md §22): the instruction through CLIP's text tower, the
image's patches through CLIP's visual projection, in CLIP's joint space.

A LLaVA-1.5 checkpoint holds CLIP's vision tower only; CDPruner's code loads the text tower and the
visual projection from the same CLIP checkpoint beside it. `ClipRelevance` is those parts, given to
`reroute.apply(..., instruction_encoder=...)`; without it the stage measures relevance in the decoder's
embedding space (`reroute.methods.cdpruner.parts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reroute.runtime import compat

#: the vision towers whose patches CLIP's visual projection maps (the projection is trained on their output)
CLIP_TOWERS = ("CLIPVisionModel", "CLIPVisionModelWithProjection")


@dataclass(frozen=True, eq=False)
class ClipRelevance:
    """CLIP's text tower and visual projection, and the tokenizers that carry the instruction to it.

    text_model: CLIP's ``CLIPTextModel`` (its ``pooler_output`` is the end-of-text state); text_projection,
    visual_projection: CLIP's two projections into the joint space; clip_tokenizer: CLIP's tokenizer;
    tokenizer: the VLM's, which decodes the instruction's ids to the text CLIP reads.
    """

    text_model: nn.Module
    text_projection: nn.Module
    visual_projection: nn.Module
    clip_tokenizer: Any
    tokenizer: Any

    @classmethod
    def from_clip(cls, clip: nn.Module, clip_tokenizer: Any, tokenizer: Any) -> ClipRelevance:
        """From a loaded ``CLIPModel`` (the checkpoint of the VLM's vision tower) and the two tokenizers."""
        return cls(clip.text_model, clip.text_projection, clip.visual_projection, clip_tokenizer, tokenizer)

    @classmethod
    def from_pretrained(cls, name_or_path: str, tokenizer: Any, **kwargs: Any) -> ClipRelevance:
        """Load CLIP (a hub id such as ``openai/clip-vit-large-patch14-336``, LLaVA-1.5's tower, or a local
        folder) with ``CLIPModel.from_pretrained(name_or_path, **kwargs)``; ``tokenizer`` is the VLM's."""
        from transformers import AutoTokenizer, CLIPModel

        clip = CLIPModel.from_pretrained(name_or_path, **kwargs).eval()
        return cls.from_clip(clip, AutoTokenizer.from_pretrained(name_or_path), tokenizer)

    def to(self, device: torch.device | str) -> ClipRelevance:
        """Move CLIP's parts to ``device`` (in place, as ``nn.Module.to``); returns self."""
        for module in (self.text_model, self.text_projection, self.visual_projection):
            module.to(device)
        return self

    def refusal(self, model: nn.Module) -> str | None:
        """Why this CLIP cannot measure relevance on ``model``'s images, or None."""
        inner = getattr(model, "model", None)
        tower = getattr(inner, "vision_tower", None)
        config = model.config
        if type(tower).__name__ not in CLIP_TOWERS or not isinstance(getattr(config, "vision_feature_layer", None), int):
            return (
                "instruction_encoder=ClipRelevance needs LLaVA-1.5's layout (a CLIP vision tower, one int "
                f"vision_feature_layer), not {type(model).__name__}; drop instruction_encoder to measure relevance in "
                "the decoder's embedding space"
            )
        width = tower.config.hidden_size
        if getattr(self.visual_projection, "in_features", width) != width:
            return (
                f"instruction_encoder's CLIP projects {self.visual_projection.in_features}-wide patches, the model's "
                f"tower gives {width}-wide ones; load the CLIP checkpoint of the model's vision tower"
            )
        return None

    @torch.no_grad()
    def image_embeds(self, model: nn.Module, patches: torch.Tensor) -> torch.Tensor:
        """``(N, C)``: an image's patches (the tower layer LLaVA reads) through the tower's post-layernorm and
        CLIP's visual projection, in the projection's dtype (CDPruner's code: float32)."""
        normed = compat.clip_post_layernorm(model.model.vision_tower)(patches)
        weight = self.visual_projection.weight
        return self.visual_projection(normed.to(weight.device, weight.dtype))

    @torch.no_grad()
    def text_embeds(self, instruction_ids: torch.Tensor) -> torch.Tensor:
        """``(M, C)``: the instruction (ids of the VLM's vocabulary) decoded, tokenized by CLIP, cut into
        segments of CLIP's context length (the last one zero-padded), each segment's projected end state."""
        text = self.tokenizer.decode(instruction_ids.tolist(), skip_special_tokens=True)
        encoded = self.clip_tokenizer(text=[text], return_tensors="pt")
        context = self.text_model.config.max_position_embeddings
        length = encoded["input_ids"].shape[1]
        padding = context * ((length - 1) // context + 1) - length
        device = self.text_projection.weight.device
        inputs = {
            name: torch.cat([value, value.new_zeros(1, padding)], dim=1).reshape(-1, context).to(device)
            for name, value in encoded.items()
            if name in ("input_ids", "attention_mask")
        }
        return self.text_projection(self.text_model(**inputs).pooler_output)
