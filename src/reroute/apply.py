"""`reroute.apply(model, config)`: route a stock transformers VLM in place, reversibly.

Three instance attributes are set (`reroute.runtime.patching.Patch`), nothing else is touched: the
VLM's ``generate`` (to refuse the modes the engine cannot run exactly and to learn the prompt
length, `reroute.runtime.generation_modes`), the multimodal model's ``forward`` (to see the prompt's
``input_ids`` or ``inputs_embeds``, where the visual positions are; it is what both
``model(...)`` and ``model.model(...)`` call) and its decoder's ``forward`` (the routed layer
loop). ``restore()`` removes exactly those, so parameters, buffers and class code are never
changed and a wrapper another library set first comes back. A config with a vision stage
(Nüwa) patches a fourth, the multimodal model's ``get_image_features``: the stage runs where
the stock model encodes images, also when generate() encodes them before the first forward.
On transformers 5.24 the VLM's ``_prepare_static_cache`` is patched too, so that
``generate(cache_implementation="static")`` builds a `RoutedStaticCache` (docs/semantics.md §17).

The visual positions reach the decoder through a context variable that lives exactly as long
as one call of the multimodal forward; a stage conditioned on the instruction (CDPruner) reads
the prompt of the call that encodes the images (generate()'s, or the forward's) through another. Decode steps find their prefill's decisions through
the KV cache object they continue, so nothing leaks from one call (or one generate) to the next.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import inspect
import warnings
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from reroute.runtime import compat, outputs
from reroute.backbones import Backbone, backbone_for
from reroute.runtime.adapter import Positions
from reroute.backbones.refused import decoder_refusal
from reroute.config import RoutingConfig
from reroute.runtime.engine import DecodeState, RoutedDecoder
from reroute.runtime.generation_modes import (
    CURRENT_GENERATE,
    RESTORE,
    GenerateCall,
    check_cache,
    check_generate,
    refuse_packed,
)
from reroute.runtime.masks import SUPPORTED_ATTENTION, key_padding, padding_from_4d
from reroute.methods import get_vision_stage
from reroute.methods.vision_stage import CURRENT_PROMPT, StagePrompt, split_dropped
from reroute.runtime.patching import Patch, execution_devices, forward_attribute
from reroute.runtime.static_cache import NO_ATTENTIONS, RoutedStaticCache, full_attention_mask, prefill_padding
from reroute.runtime.trace import Trace


@dataclass(frozen=True)
class _Call:
    """The part of one multimodal forward call the decoder needs: where the visual tokens are."""

    visual: torch.Tensor | None  # (B, L) bool; None when the call brings no image or video
    positions_unknown: bool = False  # inputs_embeds without ids or visual inputs: visual positions cannot be known


@dataclass(frozen=True)
class _Wanted:
    """The optional outputs a forward asked for."""

    hidden: bool | int | list[int]  # output_hidden_states: a flag, or the indices of the states wanted
    attentions: bool  # the attention weights of every layer (eager)
    weightless: bool = False  # output_attentions under an implementation without weights (SDPA): stock's answer


@dataclass(frozen=True)
class _StaticRouting:
    """What a routed static cache carries for its decode steps: whose prefill filled it, and its decisions."""

    owner: int  # id of the RoutingHandle
    state: DecodeState


# Set for the duration of one multimodal forward; reset in `finally`, so it never outlives the call.
_CURRENT_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("reroute_call", default=None)

# keyword arguments through which a multimodal forward receives images or video (or their features)
_VISUAL_INPUTS = ("pixel_values", "pixel_values_videos", "image_embeds", "video_embeds", "mm_encoder_outputs")
NEW_VISUAL_ON_ROUTED_CACHE = "new visual tokens cannot continue a routed cache; start a new generate() call for a new image"
UNKNOWN_POSITIONS = (
    "visual positions unknown (inputs_embeds without input_ids or pixel values): this call ran unrouted; "
    "pass input_ids, or inputs_embeds together with the pixel values"
)


MASK_SHAPES = (
    "reroute needs the 2-D padding attention_mask (batch, length) that processors return, or a 4-D mask "
    "(batch, 1, queries, keys)"
)
CUSTOM_MASK = (
    "this custom 4-D attention_mask cannot be gathered to a routed stage: each row must be one prompt, causal over "
    f"its padding (what a 2-D mask says), seen or not seen (0 or the minimum); pass the 2-D mask, {RESTORE}"
)

CUSTOM_DECODE_MASK = (
    "this custom 4-D attention_mask hides prompt tokens its routed prefill saw: the routed cache holds the prefill's "
    f"keys, so a decode step must see the prompt as the prefill did; pass the prefill's padding, {RESTORE}"
)


def _brings_visual(arguments: dict) -> bool:
    """True when the call carries images or video (generate() passes an empty ``mm_encoder_outputs`` dict otherwise)."""
    for name in _VISUAL_INPUTS:
        value = arguments.get(name)
        if isinstance(value, dict):
            if any(v is not None for v in value.values()):
                return True
        elif value is not None:
            return True
    return False


def _last_real_token(attention_mask: torch.Tensor | None, shape: torch.Size, device) -> torch.Tensor:
    """``(B, L)`` bool: each sample's last non-padding position, the query of every decision (docs/semantics.md §2)."""
    batch, length = shape
    if attention_mask is None:
        valid = torch.ones(batch, length, dtype=torch.bool, device=device)
    else:
        valid = key_padding(attention_mask)  # 2-D, or a 4-D mask the stock mask takes as it is
    last = (valid * torch.arange(length, device=device)).argmax(dim=1)
    return torch.nn.functional.one_hot(last, length).bool() & valid


def _prefix(positions: Positions, length: int) -> tuple[Positions, Positions]:
    """Split a call's positions into its first ``length`` tokens and the rest (last axis is the sequence)."""
    text = positions.text
    head = Positions(rope=positions.rope[..., :length], text=None if text is None else text[..., :length])
    tail = Positions(rope=positions.rope[..., length:], text=None if text is None else text[..., length:])
    return head, tail


class RoutingHandle:
    """A routed model. Use ``handle.trace`` after a forward, ``handle.restore()`` (or ``with``) to undo."""

    def __init__(
        self,
        model: nn.Module,
        config: RoutingConfig,
        backbone: Backbone,
        record_scores: bool = False,
        instruction_encoder: object = None,
    ) -> None:
        self.model = model
        self.config = config
        self.backbone = backbone
        self.text_model = backbone.text_model(model)
        self.multimodal_model = backbone.multimodal_model(model)
        self.decoder = RoutedDecoder(backbone, self.text_model, config, record_scores)
        # the stock decoder's answer to output_attentions=True under SDPA on this release (docs/semantics.md §18)
        self._weightless = compat.weightless_attentions(self.text_model, len(self.decoder.layers))
        self.trace: Trace | None = None
        # decisions (and layouts) of each routed prefill, found again by the cache that decode steps continue
        self._decode_states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        # the padding of each routed prefill's prompt, (B, L) bool: what a 4-D decode mask must still see
        self._prompt_padding: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._warned_unknown = False
        self._active = True
        self._patches = [
            (model, Patch(model, "generate", self._generate)),
            (self.multimodal_model, Patch(self.multimodal_model, "forward", self._multimodal_forward)),
            # inside accelerate's hook when the decoder carries one (a device map that places it as one unit)
            (self.text_model, Patch(self.text_model, forward_attribute(self.text_model), self._text_forward)),
        ]
        if compat.ROUTED_STATIC_CACHE and hasattr(model, compat.STATIC_CACHE_BUILDER):
            # generate(cache_implementation="static") builds a routed static cache (docs/semantics.md §17)
            self._patches.append((model, Patch(model, compat.STATIC_CACHE_BUILDER, self._static_cache)))
        # a stage conditioned on the prompt's text (CDPruner) reads it from the call that encodes the images
        self._stage_reads_prompt = False
        if config.vision_stage is not None:
            stage = get_vision_stage(config.vision_stage)
            self._stage_reads_prompt = stage.reads_prompt
            stage_features = stage.image_features(model, config.vision_parameters, instruction_encoder)
            patch = Patch(self.multimodal_model, "get_image_features", lambda _original, *a, **k: stage_features(*a, **k))
            self._patches.append((self.multimodal_model, patch))
        self._multimodal_signature = inspect.signature(self._patches[1][1].original)

    # ------------------------------------------------------------------ lifecycle
    def restore(self) -> nn.Module:
        """Give the model back exactly as it was before `apply` (idempotent)."""
        if self._active:
            for module, patch in reversed(self._patches):
                patch.undo(module)
            self._active = False
        return self.model

    def __enter__(self) -> RoutingHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def __repr__(self) -> str:
        state = "active" if self._active else "restored"
        return f"RoutingHandle({type(self.model).__name__}, {self.config}, {state})"

    # ------------------------------------------------------------------ generate and forwards
    def _generate(self, original, *args, **kwargs):
        prompt_length = check_generate(self.model, args, kwargs)  # refuses before anything runs
        token = CURRENT_GENERATE.set(GenerateCall(owner=id(self), prompt_length=prompt_length))
        # generate() may encode the images before the first forward (transformers 5.24): the stage reads its prompt
        input_ids = kwargs.get("input_ids", args[0] if args else kwargs.get("inputs"))
        prompt_token = CURRENT_PROMPT.set(self._stage_prompt(input_ids, kwargs.get("attention_mask")))
        try:
            return original(*args, **kwargs)
        finally:
            CURRENT_PROMPT.reset(prompt_token)
            CURRENT_GENERATE.reset(token)

    def _stage_prompt(self, input_ids, attention_mask) -> StagePrompt | None:
        """The prompt a stage that reads it is given (`reroute.methods.vision_stage.StagePrompt`), or None."""
        if not self._stage_reads_prompt or not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
            return None
        if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim in (2, 4):
            valid = key_padding(attention_mask)[:, -input_ids.shape[1] :].to(input_ids.device)
        else:
            valid = torch.ones(input_ids.shape, dtype=torch.bool, device=input_ids.device)
        return StagePrompt(input_ids, valid, self.backbone.visual_mask(self.model.config, input_ids))

    def _static_cache(self, original, *args, **kwargs) -> RoutedStaticCache:
        """The cache generate() builds for ``cache_implementation="static"``: routed, with the stock one's size."""
        return RoutedStaticCache.like(original(*args, **kwargs), self.model.config)

    def _multimodal_forward(self, original, *args, **kwargs):
        cache = kwargs.get(compat.CACHE_KEYWORD)
        if self._static_decode(cache):
            # A decode step on a routed static cache: the cache says how to route it, and this path stays
            # free of graph breaks so that generate() can compile the step whole (docs/semantics.md §17).
            if _brings_visual(kwargs):
                raise ValueError(NEW_VISUAL_ON_ROUTED_CACHE)
            return original(*args, **kwargs)
        arguments = self._multimodal_signature.bind_partial(*args, **kwargs).arguments
        arguments = {**arguments.pop("kwargs", {}), **arguments}
        input_ids, inputs_embeds = arguments.get("input_ids"), arguments.get("inputs_embeds")
        visual, unknown = None, False
        brings_visual = _brings_visual(arguments)
        if brings_visual:
            # Decode steps bring no pixels: a generated token that happens to be an image token id is text.
            if input_ids is not None:
                visual = self.backbone.visual_mask(self.model.config, input_ids)
            elif inputs_embeds is not None:
                visual = self.backbone.visual_mask_from_embeds(
                    self.model.config, self.text_model.embed_tokens, inputs_embeds
                )
        elif input_ids is None and inputs_embeds is not None:
            unknown = True  # embeddings with the features already merged in, or text only: nobody can tell
        token = _CURRENT_CALL.set(_Call(visual=visual, positions_unknown=unknown))
        prompt_token = None
        if brings_visual:  # this call encodes its images (or brings their features)
            prompt_token = CURRENT_PROMPT.set(self._stage_prompt(input_ids, arguments.get("attention_mask")))
        try:
            return original(*args, **kwargs)
        finally:
            if prompt_token is not None:
                CURRENT_PROMPT.reset(prompt_token)
            _CURRENT_CALL.reset(token)

    def _text_forward(
        self,
        original,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ):
        cache = kwargs.pop("past_key_values", cache)  # the decoder's cache keyword before transformers 5.24
        if self._static_decode(cache):
            return self._continue_static(inputs_embeds, input_ids, attention_mask, position_ids, cache, use_cache, kwargs)
        call = _CURRENT_CALL.get()
        if call is None:  # the decoder was called on its own, not through the VLM: nothing to route
            return original(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                use_cache=use_cache,
                **{self.decoder.compat.cache_keyword: cache},
                **kwargs,
            )
        kwargs.pop("return_dict", None)
        for name in compat.STOCK_ONLY_KWARGS:  # recomputed by the routed loop
            kwargs.pop(name, None)
        wanted = self._wanted_outputs(kwargs)
        if isinstance(cache, RoutedStaticCache):  # its prefill: generate() passes the 4-D mask it built for it
            if wanted.attentions:
                raise ValueError(NO_ATTENTIONS)
            length = (inputs_embeds if inputs_embeds is not None else input_ids).shape[1]
            attention_mask = prefill_padding(attention_mask, length)
        if attention_mask is not None and not (isinstance(attention_mask, torch.Tensor) and attention_mask.ndim in (2, 4)):
            raise ValueError(MASK_SHAPES)
        if inputs_embeds is None:
            inputs_embeds = self.text_model.embed_tokens(input_ids)
        if use_cache is None:
            use_cache = self.text_model.config.use_cache

        state = self._decode_states.get(cache) if cache is not None else None
        past = state.past_length(cache) if state is not None else cache.get_seq_length() if cache is not None else 0
        positions = self.backbone.positions(position_ids, inputs_embeds, past)
        if attention_mask is not None and attention_mask.ndim == 4:
            attention_mask = self._custom_mask(attention_mask, call, state, cache)
        if state is not None:
            if call.visual is not None and bool(call.visual.any()):
                raise ValueError(NEW_VISUAL_ON_ROUTED_CACHE)
            # decode steps, or a continuation with more text: new tokens attend to each layer's cached active keys
            return self._continue(
                inputs_embeds, attention_mask, positions, cache, use_cache, state, past, wanted, kwargs
            )
        if past > 0:
            raise ValueError(
                "reroute cannot continue a KV cache it did not fill; run the prompt through the routed model first"
            )
        check_cache(cache)
        refuse_packed(position_ids, attention_mask)
        return self._prefill(call, inputs_embeds, attention_mask, positions, cache, use_cache, wanted, kwargs)

    def _custom_mask(self, mask: torch.Tensor, call: _Call, state: DecodeState | None, cache) -> torch.Tensor:
        """A custom ``(B, 1, q, kv)`` mask (docs/semantics.md §18): the 2-D padding mask it was built from, which
        the engine gathers per stage and per layer's cache; as it is where the call routes nothing (every
        layer takes the stock mask then); else refused."""
        if state is not None:
            routes = any(stage >= 0 for stage in state.layer_stage)
        else:
            routes = call.visual is not None and bool(call.visual.any())
        padding = padding_from_4d(mask)
        if padding is not None and state is not None and routes:
            # decode steps: the compact layers' caches hold the keys the prefill saw, so must the mask
            seen = self._prompt_padding.get(cache)
            if seen is None or not torch.equal(padding[:, : state.prompt_length].bool(), seen.to(padding.device)):
                raise ValueError(CUSTOM_DECODE_MASK)
        if padding is not None:
            return padding
        if routes:
            raise ValueError(CUSTOM_MASK)
        return mask

    def _wanted_outputs(self, kwargs: dict) -> _Wanted:
        """``output_hidden_states`` / ``output_attentions``, defaulting to the decoder config's as stock."""
        config = self.text_model.config
        hidden = kwargs.pop("output_hidden_states", None)
        attentions = kwargs.pop("output_attentions", None)
        asked = bool(getattr(config, "output_attentions", False) if attentions is None else attentions)
        weightless = asked and config._attn_implementation != "eager"
        wanted = _Wanted(
            hidden=getattr(config, "output_hidden_states", False) if hidden is None else hidden,
            attentions=asked and not weightless,
            weightless=weightless,
        )
        if weightless:
            # As the stock decoder (docs/semantics.md §18): the layers get the flag, so their attention function
            # gives its own warning, and `attentions` is what stock returns when no layer computes weights.
            self._weightless.warn()
            kwargs["output_attentions"] = True
        if (wanted.hidden or wanted.attentions) and self.decoder.scorer.recycles:
            raise ValueError(
                f"output_hidden_states / output_attentions are not supported with scorer={self.config.scorer!r} "
                "(its merged tokens have no prompt position); call handle.restore() to get them from the stock model"
            )
        if (wanted.hidden or wanted.attentions) and self.config.vision_stage is not None:
            raise ValueError(
                f"output_hidden_states / output_attentions are not supported with vision_stage="
                f"{self.config.vision_stage!r} yet; call handle.restore() to get them from the stock model"
            )
        return wanted

    def _recording(self, wanted: _Wanted):
        return outputs.recording(self.decoder.layers, bool(wanted.hidden), wanted.attentions)

    def _static_decode(self, cache) -> bool:
        """True for a decode step on a routed static cache this handle's prefill filled."""
        return isinstance(cache, RoutedStaticCache) and getattr(cache.routing_state, "owner", None) == id(self)

    def _continue_static(self, embeds, input_ids, attention_mask, position_ids, cache, use_cache, kwargs):
        """Decode step(s) on a routed static cache: static shapes, no tensor value read (compilable whole)."""
        kwargs.pop("return_dict", None)
        for name in compat.STOCK_ONLY_KWARGS:
            kwargs.pop(name, None)
        wanted = self._wanted_outputs(kwargs)
        if wanted.attentions:
            raise ValueError(NO_ATTENTIONS)
        if embeds is None:
            embeds = self.text_model.embed_tokens(input_ids)
        if use_cache is None:
            use_cache = self.text_model.config.use_cache
        state = cache.routing_state.state
        positions = self.backbone.positions(position_ids, embeds, cache.get_seq_length())
        full_mask = full_attention_mask(attention_mask)
        if full_mask is None or full_mask.ndim == 2:  # a forward outside generate(): build the mask generate() builds
            full_mask = self.decoder.compat.causal_mask(self.text_model.config, embeds, full_mask, cache, positions.text)
        with self._recording(wanted) as record:
            hidden = self.decoder.decode_static(embeds, full_mask, positions, cache, use_cache, state, kwargs)
        hidden_states = None
        if wanted.hidden:
            hidden_states = outputs.select_hidden_states(outputs.decode_hidden_states(embeds, record, hidden), wanted.hidden)
        return compat.decoder_output(hidden, cache, hidden_states=hidden_states)

    def _continue(self, embeds, attention_mask, positions, cache, use_cache, state, past: int, wanted: _Wanted, kwargs):
        """Decode step(s) on a routed cache: the new tokens take part in every layer."""
        with self._recording(wanted) as record:
            hidden = self.decoder.decode(embeds, attention_mask, positions, cache, use_cache, state, kwargs)
        hidden_states = None
        attentions = self._weightless.value if wanted.weightless else None
        if wanted.hidden:
            hidden_states = outputs.select_hidden_states(outputs.decode_hidden_states(embeds, record, hidden), wanted.hidden)
        if wanted.attentions:
            rows = outputs.decode_attentions(record, state.layer_layouts(), state.prompt_length, past, embeds.shape[1])
            attentions = tuple(rows)
        return compat.decoder_output(hidden, cache, hidden_states=hidden_states, attentions=attentions)

    def _prefill(self, call: _Call, embeds, attention_mask, positions, cache, use_cache, wanted: _Wanted, kwargs):
        """A routed prefill of the prompt, then (inside generate) any tokens after it as decode steps."""
        length = embeds.shape[1]
        # Inside generate(), a first forward longer than the prompt carries generated tokens (use_cache=False)
        # or candidate tokens (assisted / prompt-lookup decoding): decide on the prompt, decode the rest.
        generating = CURRENT_GENERATE.get()
        prompt_length = length
        if generating is not None and generating.owner == id(self) and (generating.prompt_length or length) < length:
            prompt_length = generating.prompt_length
        split = prompt_length < length
        if (use_cache and cache is None) or split:
            work_cache = cache if cache is not None else compat.new_cache(self.text_model.config)
        else:
            work_cache = cache
        if isinstance(work_cache, RoutedStaticCache):
            work_cache.begin_prompt(prompt_length)  # sizes each layer by the entries its prefill writes
        visual = call.visual
        if visual is None or visual.shape != embeds.shape[:2]:
            visual = torch.zeros(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        visual = visual.to(embeds.device)
        present = None
        if self.config.vision_stage is not None:  # the vision stage marked the image tokens it dropped
            embeds, present = split_dropped(embeds, visual)
            present = present[:, :prompt_length]
        visual = visual[:, :prompt_length]
        prompt_mask = None if attention_mask is None else attention_mask[:, :prompt_length]
        if attention_mask is not None and attention_mask.ndim == 4:  # as it is (routes nothing; never split)
            prompt_mask = attention_mask
        # The query row (the last prompt token) takes part in every layer: it is never a candidate (docs/semantics.md).
        visual = visual & ~_last_real_token(prompt_mask, visual.shape, visual.device)
        head, tail = _prefix(positions, prompt_length)
        injections = self.backbone.pop_injections(kwargs, embeds)  # Qwen3-VL's DeepStack; None elsewhere
        with self._recording(wanted) as record:
            hidden, state, trace = self.decoder.prefill(
                embeds[:, :prompt_length], prompt_mask, head, work_cache, use_cache or split, visual, kwargs, present,
                injections,
            )
        layouts = state.layer_layouts()  # what each layer ran on, as the engine built it from the action
        hidden_states = attentions = None
        if wanted.hidden:
            hidden_states = outputs.prefill_hidden_states(embeds[:, :prompt_length], record, layouts, hidden, injections)
        if wanted.attentions:
            attentions = outputs.prefill_attentions(record, layouts, prompt_length)
        if split:
            with self._recording(wanted) as record:
                rest = self.decoder.decode(
                    embeds[:, prompt_length:], attention_mask, tail, work_cache, True, state, kwargs
                )
            hidden = torch.cat([hidden, rest], dim=1)
            hidden_states, attentions = outputs.append_decoded(
                hidden_states, attentions, embeds[:, prompt_length:], record, rest, layouts, prompt_length
            )
        if wanted.weightless:
            attentions = self._weightless.value
        if call.positions_unknown:
            trace = dataclasses.replace(trace, note=UNKNOWN_POSITIONS)
            if not self._warned_unknown:
                self._warned_unknown = True
                warnings.warn(f"reroute: {UNKNOWN_POSITIONS}", UserWarning, stacklevel=4)
        self.trace = trace
        if use_cache:
            self._decode_states[work_cache] = state
            self._prompt_padding[work_cache] = (
                torch.ones(visual.shape, dtype=torch.bool, device=visual.device) if prompt_mask is None
                else key_padding(prompt_mask)
            )
            if isinstance(work_cache, RoutedStaticCache):
                work_cache.routing_state = _StaticRouting(owner=id(self), state=state)
            compat.crop_per_layer(work_cache, functools.partial(state.past_length, work_cache))
        return compat.decoder_output(
            hidden,
            work_cache if use_cache else None,
            hidden_states=None if hidden_states is None else outputs.select_hidden_states(hidden_states, wanted.hidden),
            attentions=None if attentions is None else tuple(attentions),
        )


def _check_supported(model: nn.Module, config: RoutingConfig, backbone: Backbone, instruction_encoder: object) -> None:
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
    if (refused := decoder_refusal(text_model.config)) is not None:
        raise ValueError(refused)
    if config.vision_stage is not None:
        refusal = compat.vision_stage_refusal(config.vision_stage)
        if refusal is not None:
            raise ValueError(refusal)
        get_vision_stage(config.vision_stage).check_model(model)
        get_vision_stage(config.vision_stage).check_instruction_encoder(model, instruction_encoder)
    elif instruction_encoder is not None:
        raise ValueError("instruction_encoder is read by a vision stage (vision_stage='cdpruner'); this config has none: drop it")
    if len(devices := execution_devices(text_model)) > 1:
        # The routed loop keeps full-length states and scores on one device; layers on several would mix them.
        raise ValueError(
            f"the decoder's layers run on several devices ({', '.join(devices)}) under accelerate's device map; "
            "reroute runs the decoder on one: place the language model on one device (device_map={..., "
            "'model.language_model': 0}), offloading to 'cpu' / 'disk' as needed"
        )
    if Patch.installed(model, "generate") is not None or any(
        Patch.installed(text_model, name) is not None for name in ("forward", "_old_forward")
    ):
        raise ValueError("this model is already routed; call handle.restore() first")
    if Patch.foreign(text_model, forward_attribute(text_model), "forward"):
        # The routed path replaces the decoder's forward; another library's wrapper there would be skipped.
        # accelerate's hook is not one: the routed forward runs inside it (`reroute.runtime.patching`).
        raise ValueError(
            f"the forward of {type(text_model).__name__} is already patched by another library; "
            "apply reroute before that library wraps it, or remove its wrapper first"
        )


def apply(
    model: nn.Module, config: RoutingConfig, *, record_scores: bool = False, instruction_encoder: object = None
) -> RoutingHandle:
    """Route ``model`` (a stock transformers VLM) by ``config``; returns the handle.

    ``model(**inputs)`` and ``model.generate(**inputs)`` stay the user's own calls. Restore
    with ``handle.restore()`` or use the handle as a context manager. ``record_scores=True``
    also keeps every decision's candidate scores in ``handle.trace`` (for `reroute.viz`).
    ``instruction_encoder``: the text side of a vision stage conditioned on the instruction, for
    ``vision_stage="cdpruner"`` a `reroute.methods.cdpruner.ClipRelevance` (CDPruner as published;
    without it, relevance in the decoder's embedding space; docs/semantics.md §22).
    """
    compat.check_release()
    if not isinstance(config, RoutingConfig):
        raise TypeError(f"config must be a reroute.RoutingConfig, got {type(config).__name__}")
    backbone = backbone_for(model)
    _check_supported(model, config, backbone, instruction_encoder)
    return RoutingHandle(model, config, backbone, record_scores, instruction_encoder)


__all__ = ["apply", "RoutingHandle", "DecodeState"]
