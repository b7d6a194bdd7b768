"""A slow, obviously-correct reference of docs/semantics.md §2-§3, independent of the engine.

One sample at a time, no padding, full-length sequence at every layer. A layer's inactive
tokens are hidden by the mask (they are neither queries that matter nor keys) and their
states are copied through unchanged (the residual bypass). Scoring builds the full L x L
attention of the decision layer from the raw projection weights; selection sorts in Python.
"""

from __future__ import annotations

import torch

from reroute import RoutingConfig


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def full_attention_map(layer, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(L, L) head-mean causal attention of one sample, float32, from the layer's raw weights."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden[None])[0].float()
    hd = attn.head_dim
    q = (x @ attn.q_proj.weight.float().T + (attn.q_proj.bias.float() if attn.q_proj.bias is not None else 0))
    k = (x @ attn.k_proj.weight.float().T + (attn.k_proj.bias.float() if attn.k_proj.bias is not None else 0))
    q, k = q.view(len(x), -1, hd), k.view(len(x), -1, hd)
    if hasattr(attn, "q_norm"):  # QK-norm (Qwen3 decoders): RMS-normed per head before the rotation
        q, k = attn.q_norm(q.to(hidden.dtype)).float(), attn.k_norm(k.to(hidden.dtype)).float()
    q = q.transpose(0, 1)  # (H, L, hd)
    k = k.transpose(0, 1)  # (KV, L, hd)
    cos, sin = cos.float(), sin.float()
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
    logits = q @ k.transpose(1, 2) * hd**-0.5
    causal = torch.ones(len(x), len(x), dtype=torch.bool).tril()
    return logits.masked_fill(~causal, float("-inf")), causal


@torch.no_grad()
def reference_scores(layer, hidden, cos, sin, keys: list[int], rows: int = 1, heads: str = "mean") -> dict[int, float]:
    """Score of every key token: the last key's attention row, softmax over ``keys`` only.

    Nüwa on Qwen (``rows=3, heads="max"``): the rows of the last 3 keys, each over the keys at
    or before it, averaged over the rows, then the maximum over heads.
    """
    logits, _ = full_attention_map(layer, hidden, cos, sin)
    total = torch.zeros(logits.shape[0], len(keys))
    queries = keys[-rows:]
    for query in queries:
        seen = [i for i, j in enumerate(keys) if j <= query]
        probs = torch.zeros(logits.shape[0], len(keys))
        probs[:, seen] = logits[:, query, [keys[i] for i in seen]].softmax(dim=-1)  # (H, len(keys))
        total += probs / len(queries)
    reduced = total.mean(dim=0) if heads == "mean" else total.amax(dim=0)
    return {j: float(p) for j, p in zip(keys, reduced)}


def _mask(active: list[int], length: int, implementation: str, dtype) -> torch.Tensor:
    allowed = torch.zeros(length, length, dtype=torch.bool)
    for i in range(length):
        allowed[i, i] = True
        if i in active:
            for j in active:
                if j <= i:
                    allowed[i, j] = True
    if implementation == "sdpa":
        return allowed[None, None]
    return torch.zeros(1, 1, length, length, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


def _rotary_tables(text_model, embeds: torch.Tensor, rotary_positions: torch.Tensor):
    """The rotary tables as the stock decoder hands them to its layers, and each token's ``(L, head_dim)``
    rotation (what the scores use).

    Qwen-VL's rotary module returns per-axis tables ``(3, 1, L, d)`` before transformers 5.23 (the
    layers pick head-dim section ``i`` from axis ``i % 3``), merged ``(1, L, d)`` tables since.
    """
    rope = getattr(text_model.config, "rope_parameters", None) or getattr(text_model.config, "rope_scaling", None) or {}
    if "mrope_section" in rope and rotary_positions.ndim == 2:  # M-RoPE text positions: one row per axis, as stock
        rotary_positions = rotary_positions[None].expand(3, -1, -1)
    cos, sin = text_model.rotary_emb(embeds[None], rotary_positions)
    return (cos, sin), (merged_rotary(text_model.config, cos)[0], merged_rotary(text_model.config, sin)[0])


def merged_rotary(config, table: torch.Tensor) -> torch.Tensor:
    """``(B, L, d)``: each token's rotary table; per-axis Qwen-VL tables ``(3, B, L, d)`` (before
    transformers 5.23) take head-dim section ``i`` from axis ``i % 3``, as their attention does."""
    if table.ndim == 3:
        return table
    sections = (getattr(config, "rope_parameters", None) or config.rope_scaling)["mrope_section"] * 2
    axis = torch.cat([torch.full((n,), i % 3) for i, n in enumerate(sections)])  # (d,) axis of each dim
    index = axis.view(1, 1, 1, -1).expand(1, *table.shape[1:])
    return table.gather(0, index)[0]


@torch.no_grad()
def reference_forward(
    text_model, rotary_positions, embeds, visual, config: RoutingConfig | None, decisions=None,
    present=None, score_offset: int = 0, score_rows: int = 1, score_heads: str = "mean", scores_out=None,
    states: list | None = None, injections: list | None = None,
):  # fmt: skip
    """Routed forward of ONE unpadded sample (``embeds`` (L, D)); returns (final hidden (L, D), decisions).

    ``states``: when a list, each layer's full-length output (L, D) is appended to it.
    ``injections``: Qwen3-VL's DeepStack, per layer ``i`` an (L, D) tensor (zero off the visual
    positions) added after layer ``i`` to the visual tokens that ran layer ``i`` (docs/semantics.md).

    ``decisions``: per decision layer, the selected visual positions; computed from
    ``embeds[:decided_length]`` when not given (decode reuses the prefill's decisions and
    appends text tokens, which are always active).
    ``scores_out``: a list that receives, per decision, ``{candidate position: score}``.

    A vision stage (Nüwa's stage 1): ``present`` (per prompt position) is False at the tokens
    it dropped; they take part in no layer and are never keys or candidates. Nüwa's scoring:
    decision ``d`` is scored at layer ``d + score_offset`` on that layer's input, with
    ``score_rows`` query rows and ``score_heads`` ("mean" or "max") over heads.
    """
    length = embeds.shape[0]
    layers = text_model.layers
    implementation = text_model.config._attn_implementation
    layer_tables, (cos, sin) = _rotary_tables(text_model, embeds, rotary_positions)
    present = [True] * length if present is None else list(present) + [True] * (length - len(present))
    visual_positions = [j for j in range(length) if visual[j] and present[j]]
    text_positions = [j for j in range(length) if not visual[j]]
    prompt_length = len(visual) if decisions is None else None
    found = [] if decisions is None else list(decisions)
    active = [j for j in range(length) if present[j]]
    scored = {}  # decision -> scores, when scored at an earlier layer
    h = embeds.clone()

    def score_at(i, layer):
        """Score the decisions read from layer ``i`` on its input, with the tokens active now."""
        for s, d in enumerate(config.decision_layers):
            if d + score_offset == i:
                if config.action == "remove":
                    keys = [j for j in active if j < prompt_length]
                else:
                    keys = [j for j in range(prompt_length) if present[j]]
                args = (layer, h[:prompt_length], cos[:prompt_length], sin[:prompt_length], keys)
                scored[s] = reference_scores(*args, rows=score_rows, heads=score_heads)

    scoring = config is not None and decisions is None and bool(visual_positions)
    for i, layer in enumerate(layers):
        if scoring and score_offset == 0:  # the decision layer's own attention, before it decides
            score_at(i, layer)
        if config is not None and i in config.decision_layers and visual_positions:
            s = config.decision_layers.index(i)
            if decisions is None:
                if config.action == "reroute":
                    candidates = visual_positions
                else:
                    candidates = [j for j in active if visual[j]]
                scores = scored[s]
                if scores_out is not None:
                    scores_out.append({j: scores[j] for j in candidates})
                k = config.keep_counts(len(visual_positions))[s]
                chosen = sorted(sorted(candidates, key=lambda j: (-scores[j], j))[:k])
                found.append(chosen)
            chosen = found[s]
            active = sorted(set(text_positions) | set(chosen))
        if scoring and score_offset < 0:  # an earlier layer's attention, after any decision taken there
            score_at(i, layer)
        mask = _mask(active, length, implementation, h.dtype)
        out = layer(h[None], attention_mask=mask, position_embeddings=layer_tables)
        out = (out[0] if isinstance(out, tuple) else out)[0]  # Qwen-VL layers return tuples before transformers 5.0
        keep = torch.zeros(length, dtype=torch.bool)
        keep[active] = True
        h = torch.where(keep[:, None], out, h)  # inactive tokens bypass the layer
        if states is not None:  # the layer's output, as the stock model records it (before DeepStack)
            states.append(h)
        if injections is not None and i < len(injections):
            h = torch.where(keep[:, None], h + injections[i], h)  # zero off the visual positions
    return text_model.norm(h[None])[0], found
