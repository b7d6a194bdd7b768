"""A slow reference of SparseVLM v1.5 with recycling (docs/semantics.md §21), independent of the engine.

One unpadded sample. The sequence each layer runs is held explicitly, as the official code holds
it: the prompt until the first pruning; after a pruning, the surviving tokens in order with the
merged tokens right after the last kept visual token, and positions ``0..n-1``. Decision ``s``
is scored with the raters' rows of layer ``d_s - 1`` on its input (v1.5: every head, no gravity
correction) and prunes that layer's output. Tokens appended after the prompt (a decode) are never
candidates or raters and run every layer at the positions that continue each layer's sequence
(the layer's cache length), which is what a decode step with that layer's cache computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tests.helpers.reference import _mask, full_attention_map

from reroute.methods.sparsevlm.recycle import recycle


@dataclass(frozen=True)
class Token:
    """One entry of a layer's sequence: a prompt position, or merged token ``c`` of decision ``s``."""

    position: int | None = None
    merged: tuple[int, int] | None = None
    visual: bool = False
    rater: bool = False


@dataclass
class Recycling:
    """What the reference did at each decision (in decision order)."""

    kept: list[list[Token]] = field(default_factory=list)  # the kept visual tokens, in sequence order
    merged: list[torch.Tensor] = field(default_factory=list)  # (C, D) float32, in cluster order
    lengths: list[int] = field(default_factory=list)  # the sequence's length after each decision


def _run(text_model, layer, h: torch.Tensor) -> torch.Tensor:
    """Layer ``layer`` on the whole sequence ``h`` (``(n, D)``), causal, at positions ``0..n-1``."""
    n = h.shape[0]
    tables = text_model.rotary_emb(h[None], torch.arange(n)[None])
    mask = _mask(list(range(n)), n, text_model.config._attn_implementation, h.dtype)
    out = layer(h[None], attention_mask=mask, position_embeddings=tables)
    return (out[0] if isinstance(out, tuple) else out)[0]


def _v15_scores(layer, rotary, h: torch.Tensor, seq: list[Token]) -> torch.Tensor:
    """``(n,)`` float32: per key, the mean over the raters and every head of the raters' causal
    attention rows (softmax over the keys at or before each rater)."""
    n = h.shape[0]
    cos, sin = rotary(h[None], torch.arange(n)[None])
    logits, _ = full_attention_map(layer, h, cos[0], sin[0])  # (H, n, n), causal
    probs = logits.softmax(dim=-1).mean(dim=0)  # (n, n) float32
    rows = [i for i, t in enumerate(seq) if t.rater]
    return probs[rows].mean(dim=0)


@torch.no_grad()
def recycling_forward(
    text_model, embeds: torch.Tensor, visual: list[bool], raters: list[bool], decision_layers, keep_counts,
    appended: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[Token], Recycling]:  # fmt: skip
    """SparseVLM v1.5 with recycling on one prompt (``embeds`` ``(L, D)``).

    ``raters``: per prompt position, the text raters (chosen from the decoder's input).
    ``keep_counts``: the visual tokens each decision keeps (the merged ones come on top).
    ``appended``: ``(T, D)`` input states of tokens after the prompt (a decode), or None.
    Returns the normed states of the last layer's sequence (appended tokens last), that sequence,
    and what each decision did.
    """
    seq = [Token(position=p, visual=visual[p], rater=raters[p]) for p in range(len(visual))]
    h = embeds
    num_appended = 0 if appended is None else appended.shape[0]
    if num_appended:
        seq += [Token() for _ in range(num_appended)]
        h = torch.cat([h, appended])
    record = Recycling()
    decisions = {d - 1: s for s, d in enumerate(decision_layers)}
    for i, layer in enumerate(text_model.layers):
        scores = _v15_scores(layer, text_model.rotary_emb, h, seq) if i in decisions else None
        h = _run(text_model, layer, h)
        if scores is None:
            continue
        s = decisions[i]
        candidates = [j for j, t in enumerate(seq) if t.visual]
        by_score = sorted(candidates, key=lambda j: (-float(scores[j]), j))  # ties: the earlier in the sequence
        chosen = set(by_score[: keep_counts[s]])
        pruned = [j for j in candidates if j not in chosen]  # in sequence order
        merged = recycle(h[pruned], scores[pruned]).merged if pruned else h.new_zeros(0, h.shape[1])
        last_kept = max(chosen)
        order = [j for j in range(len(seq)) if j not in pruned]
        cut = order.index(last_kept) + 1
        new_tokens = [Token(merged=(s, c), visual=True) for c in range(merged.shape[0])]
        seq = [seq[j] for j in order[:cut]] + new_tokens + [seq[j] for j in order[cut:]]
        h = torch.cat([h[order[:cut]], merged.to(h.dtype), h[order[cut:]]])
        record.kept.append([t for t in seq if t.visual and not _new(t, s)])
        record.merged.append(merged)
        record.lengths.append(len(seq) - num_appended)
    return text_model.norm(h[None])[0], seq, record


def _new(token: Token, s: int) -> bool:
    """Whether ``token`` is a merged token decision ``s`` itself created."""
    return token.merged is not None and token.merged[0] == s
