"""The ways transformers can drive a routed model: which are exact, which are refused.

A routed prefill needs the whole prompt at once (a decision scores every visual token from
the last prompt token) and leaves per-layer KV caches of different lengths. Everything that
respects both is exact; everything else is refused here, before any state changes, with a
one-line error that names the mode and the way out (docs/supported-modes.md lists them).

`generate()` is wrapped only to learn two things the forward passes cannot see: that a
forward belongs to a generate call, and how long that call's prompt is. Without a cache
(``use_cache=False``) and on the first forward of assisted / prompt-lookup decoding, the
forward's input is the prompt *plus* generated or candidate tokens; the routed decoder then
decides on the prompt alone and runs the rest as decode steps (see ``apply``).
"""

from __future__ import annotations

import contextvars
import copy
from dataclasses import dataclass

import torch

from reroute.runtime.compat import ROUTED_STATIC_CACHE, GenerationMode, is_plain_dynamic_cache
from reroute.runtime.static_cache import NO_ATTENTIONS, RoutedStaticCache

RESTORE = "or call handle.restore() first"


@dataclass(frozen=True)
class GenerateCall:
    """What one routed ``generate()`` call tells its forward passes."""

    owner: int  # id of the RoutingHandle whose generate this is
    prompt_length: int | None  # the prompt's length (input_ids or inputs_embeds); None when generate got neither


# Set for the duration of one routed generate(); reset in `finally`.
CURRENT_GENERATE: contextvars.ContextVar[GenerateCall | None] = contextvars.ContextVar("reroute_generate", default=None)


def _setting(name: str, kwargs: dict, generation_config, model):
    """A generation setting as generate() will see it: keyword, else the given config, else the model's."""
    if name in kwargs:
        return kwargs[name]
    for config in (generation_config, getattr(model, "generation_config", None)):
        if config is not None and getattr(config, name, None) is not None:
            return getattr(config, name)
    return None


#: cache_implementation values a routed generate() runs ("static" builds a RoutedStaticCache, docs/semantics.md §17;
#: "offloaded_static" needs CUDA streams and has not been checked on a routed model)
ROUTED_CACHE_IMPLEMENTATIONS = (None, "dynamic") + (("static",) if ROUTED_STATIC_CACHE else ())
# what holds per-layer lengths on this release, and the fix a refusal names: (cache objects, cache_implementation)
if ROUTED_STATIC_CACHE:
    _CACHES_HELD = ("a plain DynamicCache or a RoutedStaticCache holds; pass one of them (or none)",
                    "the default DynamicCache and cache_implementation='static' hold; use one of them")
else:
    _CACHES_HELD = ("only a plain DynamicCache holds; pass a DynamicCache (or none)",
                    "only the default DynamicCache holds; drop cache_implementation")


def check_cache(cache) -> None:
    """Refuse a cache the routed decoder cannot fill: per-layer lengths differ, which plain dynamic layers
    and reroute's own `RoutedStaticCache` allow."""
    if cache is None or isinstance(cache, tuple):
        return  # tuples are refused by transformers itself
    if isinstance(cache, RoutedStaticCache) and ROUTED_STATIC_CACHE and not cache.offloading:
        return
    plain = is_plain_dynamic_cache(cache)
    if not plain or getattr(cache, "offloading", False):
        kind = type(cache).__name__ + (" with offloading" if getattr(cache, "offloading", False) else "")
        raise ValueError(
            f"{kind} is not supported on a routed model: its layers' caches have different lengths, which "
            f"{_CACHES_HELD[0]}, {RESTORE}"
        )


# Modes transformers moved to Hub code (custom_generate): their loops repeat and select cache rows
# (contrastive search) or read layers in ways this library has not checked against the reference.
_HUB_MODES = (
    GenerationMode.CONTRASTIVE_SEARCH,
    GenerationMode.DOLA_GENERATION,
    GenerationMode.CONSTRAINED_BEAM_SEARCH,
    GenerationMode.GROUP_BEAM_SEARCH,
)


def _generation_mode(model, generation_config, kwargs: dict) -> GenerationMode | None:
    config = generation_config if generation_config is not None else getattr(model, "generation_config", None)
    if config is None:
        return None
    config = copy.deepcopy(config)
    config.update(**{k: v for k, v in kwargs.items() if hasattr(config, k)})
    return config.get_generation_mode(kwargs.get("assistant_model"))


def check_generate(model, args: tuple, kwargs: dict) -> int | None:
    """Refuse the generation modes the routed decoder does not run exactly; return the prompt length."""
    generation_config = kwargs.get("generation_config", args[1] if len(args) > 1 else None)
    custom = kwargs.get("custom_generate")
    if isinstance(custom, str):
        raise ValueError(
            f"custom_generate={custom!r} is not supported on a routed model: its decoding loop is Hub code that "
            f"reroute has not checked against its per-layer caches; use a built-in generation mode, {RESTORE}"
        )
    mode = _generation_mode(model, generation_config, kwargs)
    if mode in _HUB_MODES:
        name = mode.value.replace("_", " ")
        raise ValueError(
            f"{name} is not supported on a routed model: transformers runs it as Hub code that reroute has not "
            f"checked against its per-layer caches; use greedy, sampling, beam search or assisted decoding, {RESTORE}"
        )
    implementation = _setting("cache_implementation", kwargs, generation_config, model)
    if implementation not in ROUTED_CACHE_IMPLEMENTATIONS:
        raise ValueError(
            f"cache_implementation={implementation!r} is not supported on a routed model: its layers' caches have "
            f"different lengths, which {_CACHES_HELD[1]}, {RESTORE}"
        )
    if implementation == "static" and _setting("output_attentions", kwargs, generation_config, model):
        raise ValueError(NO_ATTENTIONS)
    if _setting("prefill_chunk_size", kwargs, generation_config, model) is not None:
        raise ValueError(
            "prefill_chunk_size is not supported on a routed model: a decision needs the whole prompt in one forward; "
            f"drop prefill_chunk_size, {RESTORE}"
        )
    for name in ("cache", "past_key_values"):
        check_cache(kwargs.get(name))
    prompt = kwargs.get("inputs_embeds")
    if prompt is None:
        prompt = kwargs.get("input_ids", args[0] if args else kwargs.get("inputs"))
    return prompt.shape[1] if isinstance(prompt, torch.Tensor) and prompt.ndim >= 2 else None


def refuse_packed(position_ids: torch.Tensor | None, attention_mask: torch.Tensor | None) -> None:
    """Packed (padding-free) rows restart their positions inside a row: the query and candidates of
    one prompt would mix several prompts. Positions of real tokens never decrease otherwise.
    Read from 1-D text positions (LLaVA, and Qwen when its 4-row positions carry a text row)."""
    if position_ids is None or position_ids.shape[-1] < 2:
        return
    if position_ids.ndim == 3 and position_ids.shape[0] != 4:
        return  # M-RoPE (temporal, height, width) rows go up and down inside an image: only a text row can tell
    rows = position_ids if position_ids.ndim == 2 else position_ids[0]  # (4, B, L): the leading text row
    step = rows[..., 1:] - rows[..., :-1]
    if attention_mask is not None and attention_mask.ndim == 2 and attention_mask.shape == rows.shape[-2:]:
        real = attention_mask.bool()
        step = step.masked_fill(~(real[..., 1:] & real[..., :-1]), 0)
    if bool((step < 0).any()):
        raise ValueError(
            "packed sequences (position_ids that restart inside a row) are not supported on a routed model: each row "
            f"must be one prompt; pad the batch instead, {RESTORE}"
        )
