"""The adapter contract: what the routed runtime needs to know about a model's decoder.

The engine owns the decoder's layer loop and calls the model's own decoder layers, rotary
embedding and final norm. An adapter only says where those are, which prompt positions are
visual, and how the family turns ``position_ids`` into rotary positions. See
docs/adding-a-backbone.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

RotaryFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Positions:
    """Positions of the tokens of one forward call.

    rope: what the model's rotary embedding takes (``(B, L)`` for Llama, ``(3, B, L)`` for M-RoPE).
    text: the 1-D text positions the stock mask builder takes (``None`` where the stock model passes none).
    """

    rope: torch.Tensor
    text: torch.Tensor | None


@dataclass(frozen=True)
class LayerInjections:
    """Features the stock decoder adds to the visual positions after its first layers (Qwen3-VL's DeepStack).

    visual: ``(B, L)`` bool, the positions that receive them (the model's own placeholder mask).
    after_layer: per layer ``i`` (from 0), ``(B, L, D)``: what is added to the output of layer ``i``
        at the ``visual`` positions (zero elsewhere).
    """

    visual: torch.Tensor
    after_layer: tuple[torch.Tensor, ...]


class DecoderAdapter:
    """What the engine and `reroute.apply` ask of a family (`reroute.backbones.base.Backbone`
    adds what the applications ask). Subclasses set ``model_classes`` and override what differs.

    The defaults fit decoders laid out like ``LlamaModel``: ``layers``, ``norm``, ``rotary_emb``;
    each layer has ``input_layernorm`` and ``self_attn`` with ``q_proj``/``k_proj`` (and
    ``q_norm``/``k_norm`` where the family has QK-norm).
    """

    #: class names of the conditional-generation models this adapter handles
    model_classes: tuple[str, ...] = ()
    #: the family's ``apply_rotary_pos_emb(q, k, cos, sin)`` (cos/sin of shape (B, L, head_dim))
    apply_rotary: RotaryFn

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        return type(model).__name__ in cls.model_classes

    # --- where things are -------------------------------------------------------------
    def text_model(self, model: nn.Module) -> nn.Module:
        """The decoder stack (embeddings, layers, norm, rotary) inside the VLM."""
        return model.model.language_model

    def multimodal_model(self, model: nn.Module) -> nn.Module:
        """The module that merges visual features into the text embeddings and calls the decoder
        (it receives ``input_ids`` / ``inputs_embeds`` and the pixel values, from the VLM or the user)."""
        return model.model

    def layers(self, text_model: nn.Module) -> nn.ModuleList:
        return text_model.layers

    def final_norm(self, text_model: nn.Module) -> nn.Module:
        return text_model.norm

    def rotary(self, text_model: nn.Module) -> nn.Module:
        return text_model.rotary_emb

    # --- what the prompt holds ----------------------------------------------------------
    def visual_token_ids(self, config) -> tuple[int, ...]:
        """Token ids whose positions hold visual features after the merge."""
        raise NotImplementedError

    def visual_mask(self, config, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` bool: positions holding image or video features (the candidate pool)."""
        mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for token_id in self.visual_token_ids(config):
            mask |= input_ids == token_id
        return mask

    def visual_mask_from_embeds(self, config, embed_tokens: nn.Module, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` bool from embeddings alone: rows equal to a visual token id's embedding, exactly the
        rule the stock models use to place the features when they get ``inputs_embeds`` without ids."""
        mask = torch.zeros(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device)
        for token_id in self.visual_token_ids(config):
            row = embed_tokens(torch.tensor(token_id, device=inputs_embeds.device)).to(inputs_embeds.dtype)
            mask |= (inputs_embeds == row).all(dim=-1)
        return mask

    # --- what the decoder adds between layers -------------------------------------------------
    def pop_injections(self, kwargs: dict, inputs_embeds: torch.Tensor) -> LayerInjections | None:
        """Take the family's between-layer visual inputs out of the decoder's ``kwargs`` (so the layers
        never see them); ``None`` for families without any (the default)."""
        return None

    # --- positions ------------------------------------------------------------------------
    def positions(self, position_ids: torch.Tensor | None, inputs_embeds: torch.Tensor, past_length: int) -> Positions:
        """Rotary and text positions exactly as the stock decoder forward derives them."""
        if position_ids is None:
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_length
            position_ids = position_ids.unsqueeze(0)
        return Positions(rope=position_ids, text=position_ids)
