"""A static KV cache whose layers hold their own routed lengths (docs/semantics.md §17).

After a routed prefill, layer ``i`` caches ``n_i`` prompt entries: the whole prompt ``L`` before
the first decision, a stage's compact active set after it (§3). transformers' ``StaticCache``
gives every layer ``max_cache_len`` slots and one write position. `RoutedStaticCache` gives
layer ``i`` exactly ``n_i + room`` slots, where ``room = max_cache_len - L`` is what
``generate()`` reserved for the new tokens, and every layer writes at its own position (its
own running count, a tensor, as ``StaticLayer`` does). Memory per layer therefore follows the
routed counts: ``2 * B * kv_heads * (n_i + room) * head_dim`` elements per layer.

The cache speaks *full positions* to transformers: ``get_seq_length()`` is the prompt length
plus the tokens decoded so far (what the stock positions and masks count), and
``get_mask_sizes()`` is ``(max_cache_len, 0)``, so the masks ``generate()`` builds ahead of a
compiled decode step are over the full positions ``0 .. max_cache_len``. `decode_masks` turns
such a mask into each layer's mask over its own slots: the stage's prompt keys, then the
decoded part of the full mask, with static shapes only (nothing here reads a tensor's value).
"""

from __future__ import annotations

import torch

from reroute.runtime.compat import Cache, StaticCache, StaticLayer
from reroute.runtime.masks import to_implementation

#: attention weights over a layer's static slots are not mapped back to prompt positions (docs/semantics.md §17)
NO_ATTENTIONS = (
    "output_attentions=True is not supported with a routed static cache; drop cache_implementation='static' "
    "to get attention weights from the default DynamicCache"
)


class RoutedStaticLayer(StaticLayer):
    """A ``StaticLayer`` sized by its first write: the prompt entries it receives plus the decode room.

    Before the cache knows the prompt (``room`` is None) it is a plain ``StaticLayer`` of
    ``max_cache_len`` slots, so the unrouted decoder can fill it too.
    """

    def __init__(self, max_cache_len: int, **kwargs) -> None:
        super().__init__(max_cache_len=max_cache_len)
        self.room: int | None = None  # slots for decoded tokens, set by RoutedStaticCache.begin_prompt
        self.prompt_entries: int | None = None  # entries the prefill wrote (n_i)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        if self.room is not None:
            self.prompt_entries = key_states.shape[-2]
            self.max_cache_len = self.prompt_entries + self.room
        super().lazy_initialization(key_states, value_states)


class RoutedStaticCache(StaticCache):
    """Static, compilable cache for a routed model: one `RoutedStaticLayer` per decoder layer.

    A ``StaticCache`` to everything that asks (``isinstance``, transformers' own static-cache
    tests): at keep ratio 1.0 every layer has ``max_cache_len`` slots, as the stock one.

    Built by ``generate(cache_implementation="static")`` on a routed model, or by hand with the
    same arguments as ``transformers.StaticCache`` (``config``, ``max_cache_len``: prompt plus new tokens).
    """

    def __init__(
        self, config, max_cache_len: int, offloading: bool = False, offload_only_non_sliding: bool = True, **kwargs
    ) -> None:
        text_config = config.get_text_config(decoder=True)
        layers = [RoutedStaticLayer(max_cache_len) for _ in range(text_config.num_hidden_layers)]
        # StaticCache's own __init__ only builds its uniform layers: the generic Cache takes ours
        Cache.__init__(self, layers=layers, offloading=offloading, offload_only_non_sliding=offload_only_non_sliding)
        self.max_cache_len = max_cache_len
        self.prompt_length: int | None = None  # L, the full prompt (set by the routed prefill)
        self.routing_state = None  # the prefill's DecodeState (reroute.runtime.engine), read by decode steps

    @classmethod
    def like(cls, stock: Cache, config) -> RoutedStaticCache:
        """The routed counterpart of the ``StaticCache`` generate() built (same length, same offloading)."""
        return cls(
            config,
            max_cache_len=stock.get_max_length(),
            offloading=getattr(stock, "offloading", False),
            offload_only_non_sliding=getattr(stock, "only_non_sliding", True),
        )

    def begin_prompt(self, prompt_length: int) -> None:
        """Called before the routed prefill: each layer will hold its prompt entries plus ``max_cache_len - L``."""
        if self.is_initialized or any(layer.is_initialized for layer in self.layers):
            raise ValueError(
                "this RoutedStaticCache already holds a prompt; pass a new cache (or none) for a new prompt"
            )
        room = self.max_cache_len - prompt_length
        if room < 0:
            raise ValueError(
                f"the prompt has {prompt_length} tokens but the static cache holds {self.max_cache_len}; "
                "build it with a larger max_cache_len"
            )
        self.prompt_length = prompt_length
        for layer in self.layers:
            layer.room = room

    @property
    def decode_room(self) -> int:
        """Slots each layer keeps after its prompt entries (0 before a routed prefill)."""
        return 0 if self.prompt_length is None else self.max_cache_len - self.prompt_length

    def get_seq_length(self, layer_idx: int = 0):
        """Full positions seen: the prompt length plus the tokens decoded so far (a tensor once filled)."""
        layer = self.layers[0]
        if not layer.is_initialized:
            return 0
        if self.prompt_length is None or layer.prompt_entries is None:
            return layer.get_seq_length()
        return layer.cumulative_length + (self.prompt_length - layer.prompt_entries)

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        """Masks built for this cache span the full positions ``0 .. max_cache_len`` (see `decode_masks`)."""
        return self.max_cache_len, 0

    def layer_bytes(self) -> list[int]:
        """Bytes each layer's keys and values occupy (0 for a layer not yet written)."""
        return [
            (layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size())
            if layer.is_initialized
            else 0
            for layer in self.layers
        ]


def full_attention_mask(mask):
    """The full-attention entry of the masks ``generate()`` builds for a compilable cache (a dict on families
    with ``layer_types``); the mask itself otherwise."""
    if isinstance(mask, dict):
        return mask["full_attention"]
    return mask


def prefill_padding(mask, prompt_length: int) -> torch.Tensor | None:
    """The ``(B, L)`` padding mask of a prefill from what reaches the decoder with a static cache.

    ``generate()`` turns the 2-D padding mask into a 4-D causal mask over ``max_cache_len`` keys
    before a compilable cache's forward. Its last query row is the padding mask itself (every
    prompt key precedes the last position; padding masks keys, not queries). SDPA's ``None``
    means no padding.
    """
    mask = full_attention_mask(mask)
    if mask is None or mask.ndim == 2:
        return mask
    last = mask[:, 0, -1, :prompt_length]
    return last if last.dtype == torch.bool else last == 0


def decode_masks(full_mask: torch.Tensor, prompt_keys, prompt_length: int, implementation: str, dtype: torch.dtype):
    """Per compact stage, its layers' decode mask ``(B, 1, T, n_s + room)``, from the full-position mask.

    ``full_mask``: ``(B, 1, T, L + room)`` for the ``T`` new tokens (bool, or additive float for
    eager), built by transformers for this cache. Its columns from ``L`` on are the decoded
    slots (causal, padding, unfilled slots masked); a stage's layers hold their ``n_s`` prompt
    keys (``prompt_keys[s]``, ``(B, n_s)``) and then the same decoded slots.
    """
    allowed = full_mask if full_mask.dtype == torch.bool else full_mask == 0
    decoded = allowed[..., prompt_length:]
    queries = full_mask.shape[2]
    masks = []
    for keys in prompt_keys:
        prompt = keys[:, None, None, :].expand(-1, 1, queries, -1)
        masks.append(to_implementation(torch.cat([prompt, decoded], dim=-1), implementation, dtype))
    return masks


def pad_key_slots(mask: torch.Tensor | None, room: int) -> torch.Tensor | None:
    """A compact prefill mask ``(B, 1, n, n)`` widened to the layer's ``n + room`` slots (masked).

    ``None`` (SDPA's causal kernel) stays ``None``: its top-left alignment never reaches the empty slots."""
    if mask is None or room == 0:
        return mask
    fill = False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min
    return torch.nn.functional.pad(mask, (0, room), value=fill)


def key_room(cache) -> int:
    """Empty slots after each layer's prompt entries in ``cache`` (0 for every other cache)."""
    return cache.decode_room if isinstance(cache, RoutedStaticCache) else 0


__all__ = ["NO_ATTENTIONS", "RoutedStaticCache", "RoutedStaticLayer", "decode_masks", "key_room", "pad_key_slots", "prefill_padding"]
