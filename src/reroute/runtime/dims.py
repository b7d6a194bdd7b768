"""Model dimensions and the decoder FLOP formulas: the shared facts `budget` and `cost` both use.

A leaf module (it imports nothing from reroute), so the budget solver can price a schedule
in FLOPs and the cost report can read dimensions without the two importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def text_config(model: Any) -> Any:
    """The decoder's config of a model or config (LLaVA, Qwen2-VL, Qwen2.5-VL, or a plain LLM)."""
    config = getattr(model, "config", model)  # a model carries its config
    if hasattr(config, "get_text_config"):
        return config.get_text_config()
    if hasattr(config, "text_config"):
        return config.text_config
    return config


@dataclass(frozen=True)
class DecoderDims:
    """The decoder dimensions that cost depends on."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def q_width(self) -> int:
        """Output width of the query (and input width of the output) projection."""
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """Output width of the key and value projections (GQA: fewer heads than queries)."""
        return self.num_kv_heads * self.head_dim


def decoder_dims(model: Any) -> DecoderDims:
    """The decoder's dimensions of a transformers model or config (LLaVA, Qwen2-VL, Qwen2.5-VL, LLMs).

    Reads the text config's ``hidden_size``, ``intermediate_size``, ``num_hidden_layers``,
    ``num_attention_heads``, ``num_key_value_heads`` (default: the attention heads) and
    ``head_dim`` (default: ``hidden_size // num_attention_heads``; Qwen's configs leave it unset).
    """
    if isinstance(model, DecoderDims):
        return model
    cfg = text_config(model)
    missing = [
        key
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        if not isinstance(getattr(cfg, key, None), int)
    ]
    if missing:
        raise ValueError(
            f"{type(cfg).__name__} lacks {', '.join(missing)}: pass a transformers model or config of a "
            "decoder (or a VLM whose get_text_config() returns one)"
        )
    heads = cfg.num_attention_heads
    return DecoderDims(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_layers=cfg.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
    )


def paper_layer_flops(n: float, dims: DecoderDims, kv_len: float | None = None) -> float:
    """FastV's per-layer count ``4 n d^2 + 2 n kv d + 2 n d m`` (``kv = n`` in prefill).

    With ``n`` queries attending to ``kv_len`` keys (a decode step: ``n = 1``,
    ``kv_len`` = cache + 1); ``kv_len = n`` gives the papers' ``4nd^2 + 2n^2d + 2ndm``.
    """
    d, m = dims.hidden_size, dims.intermediate_size
    kv = n if kv_len is None else kv_len
    return 4 * n * d * d + 2 * n * kv * d + 2 * n * d * m


def exact_layer_flops(n: int, dims: DecoderDims, kv_len: int | None = None, *, causal: bool = False) -> int:
    """FLOPs (2 per multiply-add) of every matmul of one decoder layer for ``n`` query tokens.

    ``kv_len`` keys (default ``n``; the queries are the last ``n`` of them). ``causal=False``
    counts the full ``n x kv_len`` attention rectangle, as kernels with an explicit mask run
    it and FlopCounterMode counts it; ``causal=True`` counts only the query-key pairs the
    causal mask lets through.
    """
    d, m = dims.hidden_size, dims.intermediate_size
    kv = n if kv_len is None else kv_len
    projections = 2 * n * d * (2 * dims.q_width + 2 * dims.kv_width)  # q, o; k, v
    mlp = 3 * 2 * n * d * m  # gate, up, down
    if causal:
        # query i (0-based among the last n of kv keys) sees kv - n + 1 + i keys
        pairs = n * (kv - n) + n * (n + 1) // 2
    else:
        pairs = n * kv
    attention = 2 * 2 * dims.num_heads * pairs * dims.head_dim  # QK^T and AV, every query head
    return projections + mlp + attention
