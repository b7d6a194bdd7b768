"""Cost accounting: decoder FLOPs and KV-cache bytes of a routing config (docs/semantics.md §7).

The per-layer token counts fix the cost, whatever a method selects (docs/semantics.md §1), so cost is
computed from the schedule and the model's dimensions alone; no forward pass is needed.
Two FLOP counts are reported, because they answer different questions:

- **paper**: ``4 n d^2 + 2 n^2 d + 2 n d m`` per layer (FastV's convention, used by the
  papers' tables). It counts a multiply-add as one operation and an MLP of two matrices,
  so it is only meaningful as a ratio to vanilla.
- **exact**: ``2 x`` multiply-adds of every matmul a decoder layer runs (q/k/v/o
  projections with GQA key/value widths, the three gated-MLP matrices, attention
  ``QK^T`` and ``AV``), the convention of ``torch.utils.flop_counter.FlopCounterMode``.
  Attention is counted as the full rectangle of ``queries x keys``: with an explicit mask
  (how the routing engine runs eager/SDPA attention) the kernels compute masked products
  too, and FlopCounterMode counts them. ``*_causal`` fields count only the lower
  triangle, the work a causal kernel that skips masked blocks would do.

Only the decoder layers are counted: not the embedding, final norm, lm_head or vision
tower (they do not depend on the routing schedule). The decisions' scoring (docs/semantics.md §2: one
query row against the candidates and always-kept tokens) is reported apart, in
``scoring_flops``: it is ``O(L d)`` per decision, small next to a layer. A vision stage
(Nüwa's stage 1) lets only its ``K`` tokens into the decoder, so the per-layer counts start
from ``K``; the work it adds on the vision side (Nüwa's merge) is ``vision_stage_flops``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from reroute.budgets.counts import REFERENCE_NUM_VISUAL, avg_t
from reroute.config import RoutingConfig
from reroute.runtime.dims import DecoderDims, decoder_dims, exact_layer_flops, paper_layer_flops, text_config
from reroute.registry import ACTIONS, SCORERS, VISION_STAGES

# bytes per value when neither the model nor its config says (bf16/fp16 inference)
DEFAULT_DTYPE_BYTES = 2


def scoring_flops(config: RoutingConfig | None, dims: DecoderDims, num_visual: int, num_text: int) -> int:
    """FLOPs of the decisions' scoring for one prompt (docs/semantics.md §2), matmuls only.

    At each decision: the query projection of the last prompt token, the key projection of
    every key token, and one row of ``QK^T`` over every query head. The keys are every
    candidate and always-kept token: the whole prompt for ``reroute`` (and for the first
    decision), the survivors of the previous stage for later ``remove`` decisions. A decision
    that keeps every candidate (keep ratio 1.0, say) scores nothing. A scorer that reads
    several query rows (Nüwa on Qwen: 3) pays the query and ``QK^T`` work once per row; one that
reads none and projects no key (random, V2Drop: ``query_rows = 0``, ``projects_keys = False``)
scores for free in matmul FLOPs. With a
    vision stage, the candidates are the tokens it let into the decoder.
    """
    if config is None:
        return 0
    num_visual = config.decoder_visual_count(num_visual)
    counts = config.keep_counts(num_visual)
    stages = config.stage_visual_counts(num_visual)  # the keep counts, plus merged tokens when a scorer recycles
    action = ACTIONS.get(config.action)
    scorer = SCORERS.get(config.scorer)
    rows = scorer.rows_read(num_text)
    total = 0
    for s in range(config.num_decisions):
        candidates = action.num_candidates(num_visual, None if s == 0 else stages[s - 1])
        if counts[s] >= candidates:
            continue
        keys = num_text + candidates
        total += 2 * rows * dims.hidden_size * dims.q_width  # q of the query rows
        if scorer.projects_keys:  # rules without an attention row (random, V2Drop) project no key
            total += 2 * keys * dims.hidden_size * dims.kv_width  # k of every key
        total += 2 * rows * dims.num_heads * keys * dims.head_dim  # the rows of QK^T
    return total


def vision_stage_flops(config: RoutingConfig | None, model: Any, num_visual: int) -> int:
    """FLOPs the config's vision stage adds for one image of ``num_visual`` tokens (0 without a stage
    or without the vision tower's dimensions, e.g. for a bare `DecoderDims`)."""
    if config is None or config.vision_stage is None or not hasattr(getattr(model, "config", model), "vision_config"):
        return 0
    stage = VISION_STAGES.get(config.vision_stage)
    return stage.flops(num_visual, dict(config.vision_params), getattr(model, "config", model))


@dataclass(frozen=True)
class CostReport:
    """Decoder cost of one routing config on one model shape (batch of identical prompts).

    Counts per layer are the integer counts a routed forward keeps. Prefill FLOPs are for
    the whole prompt, decoder layers only (``scoring_flops``: the decisions' scoring, apart);
    decode FLOPs for the first generated token (each layer attends to its cached active
    tokens plus the new one). ``vanilla`` is the same report without routing (``None`` when
    this report is vanilla); the ``*_ratio`` properties divide by it.
    """

    config: RoutingConfig | None
    dims: DecoderDims
    num_visual: int
    num_text: int
    batch_size: int
    dtype_bytes: int
    visual_per_layer: tuple[int, ...]
    tokens_per_layer: tuple[int, ...]
    avg_t: float
    avg_t_continuous: float
    flops_paper: int
    flops_exact: int
    flops_exact_causal: int
    flops_exact_per_layer: tuple[int, ...]
    decode_flops_paper: int
    decode_flops_exact: int
    kv_cache_bytes: int
    kv_cache_bytes_per_layer: tuple[int, ...]
    scoring_flops: int
    vision_stage_flops: int = 0
    vanilla: CostReport | None = None

    @property
    def baseline(self) -> CostReport:
        return self if self.vanilla is None else self.vanilla

    @property
    def flops_paper_ratio(self) -> float:
        return self.flops_paper / self.baseline.flops_paper

    @property
    def flops_exact_ratio(self) -> float:
        return self.flops_exact / self.baseline.flops_exact

    @property
    def flops_exact_causal_ratio(self) -> float:
        return self.flops_exact_causal / self.baseline.flops_exact_causal

    @property
    def decode_flops_exact_ratio(self) -> float:
        return self.decode_flops_exact / self.baseline.decode_flops_exact

    @property
    def kv_cache_ratio(self) -> float:
        return self.kv_cache_bytes / self.baseline.kv_cache_bytes

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for JSON), ratios included."""
        data = asdict(self)
        data["config"] = None if self.config is None else self.config.to_dict()
        for key in ("flops_paper", "flops_exact", "flops_exact_causal", "decode_flops_exact"):
            data[f"{key}_ratio"] = getattr(self, f"{key}_ratio")
        data["kv_cache_ratio"] = self.kv_cache_ratio
        return data


def _dtype_bytes(model: Any) -> int:
    """Bytes per cached value: the model's parameter dtype, else the config's dtype, else 2."""
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        for p in parameters():
            if p.is_floating_point():
                return p.element_size()
    import torch  # only configs get here; torch is a dependency anyway

    for cfg in (getattr(model, "config", model), text_config(model)):
        dtype = getattr(cfg, "dtype", None)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None)
        if isinstance(dtype, torch.dtype):
            return torch.empty((), dtype=dtype).element_size()
    return DEFAULT_DTYPE_BYTES


def cost(
    config: RoutingConfig | None,
    model: Any,
    num_visual: int = REFERENCE_NUM_VISUAL,
    num_text: int = 64,
    batch_size: int = 1,
    dtype_bytes: int | None = None,
) -> CostReport:
    """Decoder FLOPs and KV-cache bytes of ``config`` on ``model`` (docs/semantics.md §7).

    Args:
        config: the routing config; ``None`` for vanilla.
        model: a transformers model, a transformers config (LlavaConfig, Qwen2VLConfig,
            Qwen2_5_VLConfig, a plain decoder config) or a `DecoderDims`.
        num_visual: visual tokens of the prompt (``N_vis``).
        num_text: every other token of the prompt (never routed).
        batch_size: identical prompts per batch (everything scales linearly).
        dtype_bytes: bytes per cached value; default: the model's dtype (a config's
            ``dtype`` if set, else 2).
    """
    dims = decoder_dims(model)
    if dtype_bytes is None:
        dtype_bytes = DEFAULT_DTYPE_BYTES if isinstance(model, DecoderDims) else _dtype_bytes(model)
    report = _report(config, dims, num_visual, num_text, batch_size, dtype_bytes)
    report = replace(report, vision_stage_flops=batch_size * vision_stage_flops(config, model, num_visual))
    if config is None:
        return report
    vanilla = _report(None, dims, num_visual, num_text, batch_size, dtype_bytes)
    return replace(report, vanilla=vanilla)


def _report(
    config: RoutingConfig | None, dims: DecoderDims, num_visual: int, num_text: int, batch_size: int, dtype_bytes: int
) -> CostReport:
    layers = dims.num_layers
    if config is not None and config.decision_layers[-1] >= layers:
        raise ValueError(
            f"decision layer {config.decision_layers[-1]} is outside the decoder's {layers} layers: "
            f"use decision layers below {layers}"
        )
    visual = (
        tuple([num_visual] * layers) if config is None else tuple(config.visual_counts_per_layer(num_visual, layers))
    )
    tokens = tuple(num_text + v for v in visual)
    per_layer = tuple(batch_size * exact_layer_flops(n, dims) for n in tokens)
    kv_per_layer = tuple(batch_size * 2 * n * dims.kv_width * dtype_bytes for n in tokens)
    return CostReport(
        config=config,
        dims=dims,
        num_visual=num_visual,
        num_text=num_text,
        batch_size=batch_size,
        dtype_bytes=dtype_bytes,
        visual_per_layer=visual,
        tokens_per_layer=tokens,
        avg_t=avg_t(config, layers, num_visual, integer=True),
        avg_t_continuous=avg_t(config, layers, num_visual),
        flops_paper=batch_size * sum(int(paper_layer_flops(n, dims)) for n in tokens),
        flops_exact=sum(per_layer),
        flops_exact_causal=batch_size * sum(exact_layer_flops(n, dims, causal=True) for n in tokens),
        flops_exact_per_layer=per_layer,
        decode_flops_paper=batch_size * sum(int(paper_layer_flops(1, dims, kv_len=n + 1)) for n in tokens),
        decode_flops_exact=batch_size * sum(exact_layer_flops(1, dims, kv_len=n + 1) for n in tokens),
        kv_cache_bytes=sum(kv_per_layer),
        kv_cache_bytes_per_layer=kv_per_layer,
        scoring_flops=batch_size * scoring_flops(config, dims, num_visual, num_text),
    )
