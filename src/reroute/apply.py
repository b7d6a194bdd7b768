"""`reroute.apply(model, config)`: route a stock transformers VLM in place, reversibly.

Two instance attributes are set, nothing else is touched: the VLM's ``forward`` (to see the
prompt's ``input_ids``, where the visual positions are) and its decoder's ``forward`` (the
routed layer loop); a config with a vision stage sets a third, the inner model's
``get_image_features`` (the stage runs where the stock model encodes images, also when
generate() encodes them before the first forward). ``restore()`` deletes them, so
parameters, buffers and class code are never changed.

The visual positions reach the decoder through a context variable that lives exactly as long
as one call of the VLM's forward. Decode steps find their prefill's decisions through the KV
cache object they continue, so nothing leaks from one call (or one generate) to the next.
"""

from __future__ import annotations

import contextvars
import functools
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast

from reroute.backbones import Backbone, backbone_for
from reroute.config import RoutingConfig
from reroute.engine import DecodeState, RoutedDecoder
from reroute.masks import SUPPORTED_ATTENTION
from reroute.methods import get_vision_stage
from reroute.methods.vision_stage import split_dropped
from reroute.trace import Trace


@dataclass(frozen=True)
class _Call:
    """The part of one VLM forward call the decoder needs: where the visual tokens are."""

    visual: torch.Tensor | None  # (B, L) bool; None when the call brings no image or video


# Set for the duration of one VLM forward; reset in `finally`, so it never outlives the call.
_CURRENT_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("reroute_call", default=None)

_UNSUPPORTED_OUTPUTS = ("output_attentions", "output_hidden_states")
# keyword arguments through which a VLM forward receives images or video (or their features)
_VISUAL_INPUTS = ("pixel_values", "pixel_values_videos", "image_embeds", "video_embeds", "mm_encoder_outputs")


class RoutingHandle:
    """A routed model. Use ``handle.trace`` after a forward, ``handle.restore()`` (or ``with``) to undo."""

    def __init__(self, model: nn.Module, config: RoutingConfig, backbone: Backbone, record_scores: bool = False) -> None:
        self.model = model
        self.config = config
        self.backbone = backbone
        self.text_model = backbone.text_model(model)
        self.decoder = RoutedDecoder(backbone, self.text_model, config, record_scores)
        self.trace: Trace | None = None
        # decisions of each routed prefill, found again by the cache that decode steps continue
        self._decode_states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._original_model_forward = model.forward
        self._original_text_forward = self.text_model.forward
        self._active = True
        model.forward = _wrapping(self._original_model_forward, self._model_forward)
        self.text_model.forward = _wrapping(self._original_text_forward, self._text_forward)
        self._encoder = model.model if config.vision_stage is not None else None  # owns get_image_features
        if self._encoder is not None:
            stage = get_vision_stage(config.vision_stage)
            self._encoder.get_image_features = _wrapping(
                self._encoder.get_image_features, stage.image_features(model, config.vision_parameters)
            )

    # ------------------------------------------------------------------ lifecycle
    def restore(self) -> nn.Module:
        """Give the model back exactly as it was before `apply` (idempotent)."""
        if self._active:
            del self.model.forward
            del self.text_model.forward
            if self._encoder is not None:
                del self._encoder.get_image_features
            self._active = False
        return self.model

    def __enter__(self) -> RoutingHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def __repr__(self) -> str:
        state = "active" if self._active else "restored"
        return f"RoutingHandle({type(self.model).__name__}, {self.config}, {state})"

    # ------------------------------------------------------------------ forwards
    def _model_forward(self, *args, **kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        # Decode steps bring no pixels: a generated token that happens to be an image token id is text.
        brings_visual = any(kwargs.get(name) is not None for name in _VISUAL_INPUTS)
        visual = None
        if brings_visual and input_ids is not None:
            visual = self.backbone.visual_mask(self.model.config, input_ids)
        token = _CURRENT_CALL.set(_Call(visual=visual))
        try:
            return self._original_model_forward(*args, **kwargs)
        finally:
            _CURRENT_CALL.reset(token)

    def _text_forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ):
        call = _CURRENT_CALL.get()
        if call is None:  # the decoder was called on its own, not through the VLM: nothing to route
            return self._original_text_forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                inputs_embeds=inputs_embeds,
                use_cache=use_cache,
                **kwargs,
            )
        cache = kwargs.pop("past_key_values", cache)
        kwargs.pop("return_dict", None)
        for name in _UNSUPPORTED_OUTPUTS:
            if kwargs.pop(name, None):
                raise ValueError(f"{name}=True is not supported on a routed model; call handle.restore() first")
        if attention_mask is not None and not (isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2):
            raise ValueError("reroute needs the 2-D padding attention_mask (batch, length) that processors return")
        if inputs_embeds is None:
            inputs_embeds = self.text_model.embed_tokens(input_ids)
        if use_cache is None:
            use_cache = self.text_model.config.use_cache

        state = self._decode_states.get(cache) if cache is not None else None
        past = state.past_length(cache) if state is not None else cache.get_seq_length() if cache is not None else 0
        positions = self.backbone.positions(position_ids, inputs_embeds, past)
        if state is not None:
            if call.visual is not None:
                raise ValueError(
                    "new visual tokens cannot continue a routed cache; start a new generate() call for a new image"
                )
            hidden = self.decoder.decode(inputs_embeds, attention_mask, positions, cache, use_cache, state, kwargs)
            return BaseModelOutputWithPast(last_hidden_state=hidden, cache=cache)
        if past > 0:
            raise ValueError(
                "reroute cannot continue a KV cache it did not fill; run the prompt through the routed model first"
            )
        if use_cache and cache is None:
            cache = DynamicCache(config=self.text_model.config)
        visual = call.visual
        if visual is None or visual.shape != inputs_embeds.shape[:2]:
            visual = torch.zeros(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device)
        present = None
        if self._encoder is not None:  # the vision stage marked the image tokens it dropped
            inputs_embeds, present = split_dropped(inputs_embeds, visual.to(inputs_embeds.device))
        hidden, state, trace = self.decoder.prefill(
            inputs_embeds, attention_mask, positions, cache, use_cache, visual.to(inputs_embeds.device), kwargs, present
        )
        self.trace = trace
        if cache is not None:
            self._decode_states[cache] = state
        return BaseModelOutputWithPast(last_hidden_state=hidden, cache=cache)


def _wrapping(original, replacement):
    """A plain function calling ``replacement`` that still shows ``original``'s signature
    (generate() inspects ``forward``'s parameters, e.g. for ``logits_to_keep``)."""

    @functools.wraps(original)
    def forward(*args, **kwargs):
        return replacement(*args, **kwargs)

    return forward


def _check_supported(model: nn.Module, config: RoutingConfig, backbone: Backbone) -> None:
    text_model = backbone.text_model(model)
    num_layers = len(backbone.layers(text_model))
    for d in config.decision_layers:
        if d >= num_layers:
            raise ValueError(
                f"decision layer {d} is outside the decoder: {type(text_model).__name__} has {num_layers} layers "
                f"(valid decision layers are 1..{num_layers - 1})"
            )
    implementation = text_model.config._attn_implementation
    if implementation not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"attention implementation {implementation!r} is not supported; load the model with "
            "attn_implementation='sdpa' (default) or 'eager'"
        )
    if "sliding_attention" in (getattr(text_model.config, "layer_types", None) or ()):
        raise ValueError("sliding-window decoder layers are not supported; load the model with use_sliding_window=False")
    if config.vision_stage is not None:
        get_vision_stage(config.vision_stage).check_model(model)
    if "forward" in model.__dict__:
        raise ValueError("this model is already routed (or its forward is patched); call handle.restore() first")


def apply(model: nn.Module, config: RoutingConfig, *, record_scores: bool = False) -> RoutingHandle:
    """Route ``model`` (a stock transformers VLM) by ``config``; returns the handle.

    ``model(**inputs)`` and ``model.generate(**inputs)`` stay the user's own calls. Restore
    with ``handle.restore()`` or use the handle as a context manager. ``record_scores=True``
    also keeps every decision's candidate scores in ``handle.trace`` (for `reroute.viz`).
    """
    if not isinstance(config, RoutingConfig):
        raise TypeError(f"config must be a reroute.RoutingConfig, got {type(config).__name__}")
    backbone = backbone_for(model)
    _check_supported(model, config, backbone)
    return RoutingHandle(model, config, backbone, record_scores)


__all__ = ["apply", "RoutingHandle", "DecodeState"]
