"""Everything reroute needs from transformers' internals, for every supported release (4.57 to 5.24).

This is the only module that imports a private transformers name. What depends on the release
is decided here, once: at import for what is the same for every model (function signatures,
output-class fields), and per model in `Compat.for_model` for what depends on the model's own
code (the decoder layer's cache keyword, the rotary module's output layout). Each difference
names the release where it appears. docs/compat.md has the table of tested releases.
"""

from __future__ import annotations

import importlib.util
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers
from packaging.version import Version
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer, StaticCache, StaticLayer
from transformers.generation.configuration_utils import GenerationMode
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast

# The plain rotate-half rotation with (B, L, head_dim) tables, the same function in every release
# and every family reroute supports (Llama, Qwen2, Qwen2.5-VL once the M-RoPE sections are merged).
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

#: the transformers releases reroute runs exactly (tested on 4.57.6, 5.4.0 and 5.24.0)
SUPPORTED_TRANSFORMERS = ">=4.57,<5.25"
_OLDEST, _NEWEST_EXCLUDED = Version("4.57"), Version("5.25")

TRANSFORMERS_VERSION = transformers.__version__

# 5.24 renamed the output classes' ``past_key_values`` field to ``cache``.
_OUTPUT_CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"

#: the keyword under which forward() and generate() take a KV cache (renamed with the field in 5.24)
CACHE_KEYWORD = _OUTPUT_CACHE_FIELD

# create_causal_mask: 4.57 takes ``input_embeds`` and a required ``cache_position``; 5.0 renamed the
# first to ``inputs_embeds`` and stopped reading ``cache_position``; 5.24 renamed ``past_key_values`` to ``cache``.
_MASK_PARAMETERS = inspect.signature(create_causal_mask).parameters
_MASK_EMBEDS = "inputs_embeds" if "inputs_embeds" in _MASK_PARAMETERS else "input_embeds"
_MASK_CACHE = "cache" if "cache" in _MASK_PARAMETERS else "past_key_values"
_MASK_NEEDS_CACHE_POSITION = (
    "cache_position" in _MASK_PARAMETERS and _MASK_PARAMETERS["cache_position"].default is inspect.Parameter.empty
)

# The Qwen2.5-VL vision tower's window order: a method of the tower before 5.24, a function of
# ``transformers.vision_utils`` since (Nüwa's vision stage reads it).
try:  # 5.24 and later
    from transformers.vision_utils import get_vision_window_index as _get_vision_window_index
except ImportError:  # 4.57 .. 5.23
    _get_vision_window_index = None
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision  # noqa: E402  (all releases)

# DynamicCache.crop(n), which assisted / prompt-lookup decoding calls to drop rejected candidates:
# before 5.24 (4.57, 5.4) ``n`` is the length to keep, one number for every layer; in 5.24, minus the
# number of tokens to remove from each layer, which is right for layers of different lengths as is.
CROP_TAKES_LENGTH = "max_length" in inspect.signature(DynamicLayer.crop).parameters

# output_attentions=True under an attention implementation that computes no weights (SDPA), as the stock
# decoder answers it. In every release the flag reaches the layers (whose attention function may warn through
# its logger). Since 5.0 (``transformers.utils.output_capturing``) the output capture records no weights:
# ``attentions`` is ``()``. In 4.57 a decoder under ``check_model_inputs`` (Llama, ...) first warns (a
# UserWarning) and leaves ``attentions`` None; a hand-written layer loop (Qwen2-VL, Qwen2.5-VL) collects each
# layer's weights, None under SDPA.
_CAPTURES_EMPTY_ATTENTIONS = importlib.util.find_spec("transformers.utils.output_capturing") is not None
_WEIGHTLESS_WARNING_457 = (
    "`output_attentions=True` is not supported with `attn_implementation` other than ['eager', 'eager_paged', "
    "'flex_attention']. Please use `model.set_attn_implementation('eager')` to enable capturing attention outputs."
)


@dataclass(frozen=True)
class WeightlessAttentions:
    """The stock decoder's answer to ``output_attentions=True`` when its attention computes no weights.

    value: the ``attentions`` it returns; warning: the UserWarning it gives before the forward, if any.
    """

    value: tuple | None
    warning: str | None = None

    def warn(self) -> None:
        if self.warning is not None:
            warnings.warn(self.warning, UserWarning, stacklevel=3)


def _checks_model_inputs(forward) -> bool:
    """True when a decoder's forward is wrapped by 4.57's ``check_model_inputs`` (read from the wrappers' code)."""
    seen = 0
    while forward is not None and seen < 8:
        code = getattr(forward, "__code__", None)
        if code is not None and "check_model_inputs" in getattr(code, "co_qualname", code.co_name):
            return True
        forward, seen = getattr(forward, "__wrapped__", None), seen + 1
    return False


def weightless_attentions(text_model: nn.Module, num_layers: int) -> WeightlessAttentions:
    """How ``text_model``'s stock forward answers ``output_attentions=True`` under SDPA on this release."""
    if _CAPTURES_EMPTY_ATTENTIONS:
        return WeightlessAttentions(())
    if _checks_model_inputs(type(text_model).forward):
        return WeightlessAttentions(None, _WEIGHTLESS_WARNING_457)
    return WeightlessAttentions((None,) * num_layers)


# A routed static cache (reroute.runtime.static_cache) builds on 5.24's StaticLayer, which keeps its own
# write position as a tensor (``cumulative_length``); before 5.24 the write position came from the caller's
# ``cache_position``, one for every layer. generate() builds its static cache in ``_prepare_static_cache`` since 5.24.
ROUTED_STATIC_CACHE = "cumulative_length" in getattr(StaticLayer, "__annotations__", {})
STATIC_CACHE_BUILDER = "_prepare_static_cache"

#: keyword arguments the stock decoder forward receives that the routed loop recomputes itself
#: (4.57 passes ``cache_position`` down from the multimodal model; 5.0 dropped it)
STOCK_ONLY_KWARGS = ("cache_position",)


def unsupported_release(version: str | None = None) -> str | None:
    """The one-line refusal for a transformers release (default: the installed one) outside the range, or None."""
    version = TRANSFORMERS_VERSION if version is None else version
    parsed = Version(version)
    if _OLDEST <= Version(parsed.base_version) < _NEWEST_EXCLUDED:
        return None
    return (
        f"transformers {version} is not supported; reroute runs on transformers {SUPPORTED_TRANSFORMERS}: "
        f"pip install 'transformers{SUPPORTED_TRANSFORMERS}'"
    )


def check_release(version: str | None = None) -> None:
    """Refuse an unsupported transformers release (called by `reroute.apply` before any state changes)."""
    message = unsupported_release(version)
    if message is not None:
        raise RuntimeError(message)


def vision_stage_refusal(name: str, version: str | None = None) -> str | None:
    """Nüwa's vision stage hooks the vision towers and replaces ``get_image_features``, whose outputs
    changed shape over the 5.x releases; it is tested on 5.24 only and refused before (one line)."""
    version = TRANSFORMERS_VERSION if version is None else version
    if Version(Version(version).base_version) >= Version("5.24"):
        return None
    return (
        f"vision_stage={name!r} needs transformers>=5.24,<5.25 (installed: {version}); "
        "upgrade transformers, or route without a vision stage"
    )


def decoder_output(last_hidden_state, cache, hidden_states=None, attentions=None) -> BaseModelOutputWithPast:
    """The decoder's output, with the cache in the field this release names (``cache`` since 5.24)."""
    return BaseModelOutputWithPast(
        last_hidden_state=last_hidden_state,
        hidden_states=hidden_states,
        attentions=attentions,
        **{_OUTPUT_CACHE_FIELD: cache},
    )


def output_cache(out):
    """The KV cache a model output carries (``cache`` since 5.24, ``past_key_values`` before)."""
    return getattr(out, _OUTPUT_CACHE_FIELD, None)


def new_cache(config) -> DynamicCache:
    return DynamicCache(config=config)


def is_plain_dynamic_cache(cache) -> bool:
    """A DynamicCache whose layers are all plain dynamic layers (the only cache whose layers may differ in length)."""
    return type(cache) is DynamicCache and all(type(layer) is DynamicLayer for layer in cache.layers)


def crop_per_layer(cache, full_length: Callable[[], int]) -> None:
    """Make ``cache.crop(length)`` remove the same trailing (decoded) tokens from every layer of a routed cache,
    whose layers hold fewer entries than ``full_length()`` (the positions so far) where the prompt was compact.

    Only where crop takes a length to keep (before 5.24): an instance attribute of this one cache object,
    which lives as long as the generate call that made it."""
    if not CROP_TAKES_LENGTH or cache is None:
        return

    def crop(max_length: int) -> None:
        remove = -max_length if max_length < 0 else full_length() - max_length
        if remove <= 0:
            return
        for layer in cache.layers:
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.keys, layer.values = layer.keys[..., :-remove, :], layer.values[..., :-remove, :]

    cache.crop = crop


def layer_output(out) -> torch.Tensor:
    """A decoder layer's hidden states: Qwen2(.5)-VL's layers return ``(hidden, ...)`` tuples before 5.0."""
    return out[0] if isinstance(out, tuple) else out


def clip_post_layernorm(tower: nn.Module) -> nn.Module:
    """A CLIP vision tower's final layernorm: on the tower itself since 5.x's flattened ``CLIPVisionModel``,
    on its ``vision_model`` before (and on ``CLIPVisionModelWithProjection``)."""
    return getattr(tower, "vision_model", tower).post_layernorm


def vision_window_index(visual: nn.Module, grid_thw: torch.Tensor) -> torch.Tensor:
    """The Qwen2.5-VL tower's window order of its merged patches (``window_index``)."""
    if _get_vision_window_index is None:  # before 5.24: a method of the tower
        return visual.get_window_index(grid_thw)[0]
    return _get_vision_window_index(
        grid_thw, spatial_merge_size=visual.spatial_merge_size, window_size=visual.window_size, patch_size=visual.patch_size
    )[0]


def _mrope_section(config) -> tuple[int, ...] | None:
    """The M-RoPE sections of a Qwen-VL text config (``rope_parameters`` since 5.0, ``rope_scaling`` before)."""
    for name in ("rope_parameters", "rope_scaling"):
        params = getattr(config, name, None)
        if isinstance(params, dict) and params.get("mrope_section"):
            return tuple(params["mrope_section"])
    return None


@dataclass(frozen=True)
class Compat:
    """How to drive one model's decoder on the installed transformers; built once per model at apply time.

    cache_keyword: the decoder layer's cache keyword (``cache`` since 5.24, ``past_key_values`` before).
    mrope_section: set when the model's rotary module returns per-axis M-RoPE tables ``(3, B, L, d)``
        that its attention merges with ``apply_multimodal_rotary_pos_emb`` (Qwen2-VL / Qwen2.5-VL
        before 5.23); None when the rotary module already returns merged ``(B, L, d)`` tables.
    """

    cache_keyword: str
    mrope_section: tuple[int, ...] | None

    @classmethod
    def for_model(cls, layer: nn.Module, text_config) -> Compat:
        params = inspect.signature(layer.forward).parameters
        attention_module = inspect.getmodule(type(getattr(layer, "self_attn", layer)))
        per_axis = hasattr(attention_module, "apply_multimodal_rotary_pos_emb")
        section = _mrope_section(text_config) if per_axis else None
        if per_axis and section is None:
            raise ValueError(f"{type(layer).__name__} uses M-RoPE but its config names no mrope_section")
        return cls(cache_keyword="cache" if "cache" in params else "past_key_values", mrope_section=section)

    def rotary_tables(self, rotary: nn.Module, hidden: torch.Tensor, rope_positions: torch.Tensor):
        """``(cos, sin)``, each ``(B, L, head_dim)``: the rotation each token gets, whatever the release's layout."""
        cos, sin = rotary(hidden, rope_positions)
        if self.mrope_section is None:
            return cos, sin
        # Exactly what apply_multimodal_rotary_pos_emb selects: section i of the head dim from axis i % 3.
        sections = list(self.mrope_section) * 2
        merge = lambda t: torch.cat([m[i % 3] for i, m in enumerate(t.split(sections, dim=-1))], dim=-1)  # noqa: E731
        return merge(cos), merge(sin)

    def layer_position_embeddings(self, cos: torch.Tensor, sin: torch.Tensor):
        """What the decoder layers take from merged tables: per-axis layers get the merged table on every axis,
        which their section merge selects back unchanged."""
        if self.mrope_section is None:
            return cos, sin
        return cos.unsqueeze(0).expand(3, *cos.shape), sin.unsqueeze(0).expand(3, *sin.shape)

    def run_layer(self, layer: nn.Module, hidden, mask, position_embeddings, position_ids, cache, use_cache, kwargs):
        """One decoder layer on ``hidden``; returns its hidden states."""
        out = layer(
            hidden,
            attention_mask=mask,
            position_embeddings=self.layer_position_embeddings(*position_embeddings),
            position_ids=position_ids,
            use_cache=use_cache,
            **{self.cache_keyword: cache},
            **kwargs,
        )
        return layer_output(out)

    def causal_mask(self, config, hidden: torch.Tensor, attention_mask, cache, text_positions):
        """The stock decoder's mask for ``hidden`` after what ``cache`` holds (its first layer's length)."""
        kwargs = {
            "config": config,
            _MASK_EMBEDS: hidden,
            "attention_mask": attention_mask,
            _MASK_CACHE: cache,
            "position_ids": text_positions,
        }
        if _MASK_NEEDS_CACHE_POSITION:  # 4.57: the query positions, as the stock decoder derives them
            past = cache.get_seq_length() if cache is not None else 0
            kwargs["cache_position"] = torch.arange(past, past + hidden.shape[1], device=hidden.device)
        return create_causal_mask(**kwargs)


__all__ = [
    "CACHE_KEYWORD",
    "Cache",
    "ROUTED_STATIC_CACHE",
    "STATIC_CACHE_BUILDER",
    "StaticCache",
    "StaticLayer",
    "SUPPORTED_TRANSFORMERS",
    "TRANSFORMERS_VERSION",
    "Compat",
    "DynamicCache",
    "GenerationMode",
    "apply_rotary_pos_emb",
    "apply_rotary_pos_emb_vision",
    "check_release",
    "crop_per_layer",
    "decoder_output",
    "is_plain_dynamic_cache",
    "layer_output",
    "new_cache",
    "output_cache",
    "unsupported_release",
    "vision_stage_refusal",
    "vision_window_index",
    "WeightlessAttentions",
    "weightless_attentions",
]
