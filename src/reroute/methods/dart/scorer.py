"""The DART scorer (docs/semantics.md §20): DART's per-pivot selection turned into scores whose top ``k_s`` it is."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from reroute.methods.attention import rotate
from reroute.methods.dart.select import dart_select
from reroute.methods.scorer import Scorer, ScoringInputs, register_scorer


def layer_keys(layer, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, apply_rotary) -> torch.Tensor:
    """``(B, n, heads * head_dim)``: the keys ``layer`` computes from ``hidden`` (norm, k_proj, k_norm,
    rotary), each key head repeated for its query heads, as DART reads them."""
    attn = layer.self_attn
    batch, n, _ = hidden.shape
    k = attn.k_proj(layer.input_layernorm(hidden)).view(batch, n, -1, attn.head_dim)
    if hasattr(attn, "k_norm"):  # QK-norm families
        k = attn.k_norm(k)
    k = rotate(apply_rotary, k.transpose(1, 2).contiguous(), cos, sin)  # (B, KV, n, hd)
    k = k.repeat_interleave(attn.num_key_value_groups, dim=1)
    return k.transpose(1, 2).reshape(batch, n, -1)


def after_last_visual(visual: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """``(B, n)`` bool: the key tokens after each sample's last visual token (the instruction)."""
    positions = torch.arange(visual.shape[1], device=visual.device)
    last = torch.where(visual, positions, -1).max(dim=1).values
    return key_valid & ~visual & (positions[None] > last[:, None])


@register_scorer
class DartScorer(Scorer):
    """DART: keys of the layer before the decision pick the pivots, final-normed states their duplicates."""

    name = "dart"
    query_rows = 0
    reads_previous_layer = True
    params = {"image_pivots": 4, "text_pivots": 4}

    def check_params(self, params: Mapping[str, float]) -> None:
        super().check_params(params)
        for key, value in params.items():
            if value != int(value) or value < 0:
                raise ValueError(f"scorer 'dart': {key} must be a whole number >= 0, got {value!r}")
        if self.resolved(params)["image_pivots"] + self.resolved(params)["text_pivots"] == 0:
            raise ValueError("scorer 'dart' needs at least one pivot: set image_pivots or text_pivots above 0")

    def score(self, inputs: ScoringInputs) -> torch.Tensor:
        keys = layer_keys(inputs.previous_layer, inputs.previous_hidden, inputs.cos, inputs.sin, inputs.apply_rotary)
        key_l1 = torch.norm(keys, p=1, dim=-1)
        states = inputs.final_norm(inputs.hidden)
        text_pool = after_last_visual(inputs.visual, inputs.key_valid)
        image_pivots, text_pivots = int(inputs.params["image_pivots"]), int(inputs.params["text_pivots"])
        scores = torch.zeros(inputs.visual.shape, device=inputs.hidden.device)
        for b in range(scores.shape[0]):
            chosen = dart_select(
                key_l1[b], states[b], inputs.candidates[b], text_pool[b], int(inputs.keep[b]), image_pivots, text_pivots
            )
            scores[b] = chosen.float()
        return scores
