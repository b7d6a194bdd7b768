"""The routed prefill of a recycling scorer (SparseVLM v1.5, docs/semantics.md §21).

Opt-in: `RoutedDecoder.prefill` comes here only when its scorer ``recycles``; every other config
runs the engine's own loop unchanged. Only ``remove``, stage-wise, without a vision stage, on
LLaVA-1.5 (the official code's model; the config and the engine refuse the rest). A part of the engine: it
drives the `RoutedDecoder`'s layers with its helpers, and the engine builds the `DecodeState` and
`Trace` from what it returns.

What differs from a plain removal prefill:

- **Merged tokens.** At decision ``s`` each sample's pruned visual tokens (in sequence order)
  become ``scorer.merged_count(P)`` new visual tokens (``scorer.recycle``), which run the next
  stage right after the sample's last visual token, compete at the next decision like any visual
  token, and may be recycled again. Their rows live after the prompt's in the full-length buffer
  (one block of slots per decision, as wide as the batch's largest count); a sample's unused slots
  never run. The number of merged tokens is fixed by ``N_vis`` and the schedule
  (`RoutingConfig.stage_visual_counts`), so the slots are laid out before the first layer.
- **Renumbered positions.** A compact stage runs at positions ``p_0, p_0 + 1, ...`` over the
  sample's real tokens in sequence order (``p_0`` the stock position of its first real token): the
  official ``position_ids[:, :n]`` after each cut, per sample. Its decode steps take the stock
  position minus the stage's ``shift`` (the real prompt tokens minus the stage's real tokens): the
  layer's cache length, as the official decode does. The layers before the first decision run at
  the stock positions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from reroute.runtime.decision import ScoringInputs, select_top_k
from reroute.runtime.layout import Layout, with_trash_row
from reroute.runtime.masks import compact_prefill_mask
from reroute.runtime.static_cache import RoutedStaticCache

#: the model classes recycling runs on: LLaVA-1.5's, the one its official code runs (1-D rotary positions)
RECYCLING_MODELS = ("LlavaForConditionalGeneration",)


def recycling_refusal(backbone) -> str | None:
    """Why a recycling scorer cannot run on ``backbone``'s family (one line), or None on LLaVA-1.5."""
    if set(backbone.model_classes) & set(RECYCLING_MODELS):
        return None
    return (
        "a recycling scorer (SparseVLM v1.5, docs/semantics.md §21) is defined for LLaVA-1.5, the model of its "
        f"official code (1-D rotary positions, renumbered per layer), not {backbone.family}; use scorer='sparsevlm' "
        "(v2.0, no recycling)"
    )


NO_STATIC_CACHE = (
    "a recycling scorer (docs/semantics.md §21) renumbers each layer's decode positions, which the routed static "
    "cache does not do; generate with the default dynamic cache"
)


@dataclass(frozen=True)
class RecyclingRun:
    """What a recycling prefill leaves for the engine's `DecodeState` and `Trace`.

    hidden: ``(B, L, D)`` each prompt token's last state (not normed); prompt: the engine's
    per-prefill constants over the prompt *and the merged slots* (``length`` = L + slots);
    position_shift: per compact stage, ``(B,)`` how far its positions sit below the stock ones.
    """

    hidden: torch.Tensor
    prompt: Any
    stage_active: list
    selections: list
    scored: list
    layer_stage: list
    prompt_keys: list
    layouts: list
    position_shift: list


def recycling_prefill(decoder, hidden, attention_mask, positions, cache, use_cache, visual, kwargs) -> RecyclingRun:
    """The prefill of ``decoder`` (a `RoutedDecoder` whose scorer recycles) on ``hidden`` ``(B, L, D)``."""
    if isinstance(cache, RoutedStaticCache):
        raise ValueError(NO_STATIC_CACHE)
    if positions.rope.ndim != 2:  # LLaVA-1.5's positions are 1-D (`recycling_refusal` keeps others out)
        raise ValueError("a recycling scorer renumbers 1-D rotary positions; these are M-RoPE's")
    config, scorer = decoder.config, decoder.scorer
    batch, length, dim = hidden.shape
    device = hidden.device
    prompt = decoder._prompt(hidden, attention_mask, positions, visual, None)

    # merged slots: decision s owns `widths[s]` rows after the prompt's (and after the earlier decisions')
    added = [
        [a - k for a, k in zip(config.stage_visual_counts(n), config.keep_counts(n))] if n else [0] * config.num_decisions
        for n in prompt.num_visual
    ]
    widths = [max(per_sample[s] for per_sample in added) for s in range(config.num_decisions)]
    starts = [length + sum(widths[:s]) for s in range(config.num_decisions)]
    extended = length + sum(widths)
    slot = torch.zeros(batch, extended, dtype=torch.bool, device=device)
    slot_of = []  # per decision, (B, L') the slots it fills
    for s in range(config.num_decisions):
        mine = torch.zeros_like(slot)
        for b in range(batch):
            mine[b, starts[s] : starts[s] + added[b][s]] = True
        slot_of.append(mine)
        slot |= mine
    room = slot[:, length:]
    prompt = dataclasses.replace(
        prompt,
        length=extended,
        visual=with_trash_row(torch.cat([prompt.visual[:, :length], room], dim=1)),
        pad_valid=with_trash_row(torch.cat([prompt.pad_valid[:, :length], room], dim=1)),
        present=with_trash_row(torch.cat([prompt.present[:, :length], torch.zeros_like(room)], dim=1)),
        cos=with_trash_row(torch.cat([prompt.cos[:, :length], prompt.cos.new_zeros(batch, room.shape[1], prompt.cos.shape[-1])], dim=1)),
        sin=with_trash_row(torch.cat([prompt.sin[:, :length], prompt.sin.new_zeros(batch, room.shape[1], prompt.sin.shape[-1])], dim=1)),
    )  # fmt: skip
    visual_x, real_x = prompt.visual[:, :extended], prompt.pad_valid[:, :extended]
    prepared = decoder.scorer.prepare(hidden, visual_x[:, :length], real_x[:, :length])
    if prepared is not None:
        prepared = with_trash_row(torch.cat([prepared, torch.zeros_like(room, dtype=prepared.dtype)], dim=1))

    # sequence order: the prompt in position order, each decision's merged tokens right after the last visual token
    step = extended - length + 1
    positions_x = torch.arange(extended, device=device)
    last_visual = (visual_x[:, :length] * positions_x[:length]).amax(dim=1)
    order = torch.where(positions_x[None] < length, positions_x[None] * step, last_visual[:, None] * step + 1 + positions_x[None] - length)
    rope = positions.rope.expand(batch, -1)
    first_real = real_x[:, :length].int().argmax(dim=1)
    first_position = rope.gather(1, first_real[:, None])  # (B, 1) the stock position of the first real token
    real_prompt = real_x[:, :length].sum(dim=1)

    def compact_stage(layout: Layout, like: torch.Tensor):
        real = layout.valid & layout.gather(prompt.pad_valid)
        renumbered = first_position + (real.cumsum(dim=1) - 1).clamp(min=0)
        tables = decoder.compat.rotary_tables(decoder.rotary, like, renumbered)
        mask = compact_prefill_mask(real, decoder.text_config._attn_implementation, like.dtype)
        return mask, tables, real, real_prompt - real.sum(dim=1)

    def score(layer, h, layout: Layout | None, tables, stage: int):
        active = layout.active() if layout is not None else positions_x[None].expand(batch, -1) < length
        candidates = visual_x & active
        if not decoder.record_scores and bool((prompt.keep[stage] >= candidates.sum(dim=1)).all()):
            return None
        if layout is None:
            view = positions_x[:length].expand(batch, -1)
            key_valid = real_x[:, :length]
        else:
            view = layout.index
            key_valid = layout.valid & layout.gather(prompt.pad_valid)
        query_index = (view == prompt.query_position[:, None]).int().argmax(dim=1)
        inputs = ScoringInputs(
            layer, h, tables[0], tables[1], key_valid, query_index, decoder.backbone.apply_rotary,
            visual=prompt.visual.gather(1, view) & key_valid,
            candidates=with_trash_row(candidates).gather(1, view) & key_valid,
            keep=prompt.keep[stage], decision=stage, params=config.scorer_parameters,
            sample_length=real_prompt, prepared=None if prepared is None else prepared.gather(1, view),
            final_norm=decoder.norm,
        )  # fmt: skip
        scores = torch.full((batch, extended + 1), float("-inf"), device=device)
        scores.scatter_(1, view, scorer.score(inputs).float())
        return scores[:, :extended]

    decisions = {d: s for s, d in enumerate(config.decision_layers)}
    score_points = {d + scorer.attention_layer_offset: s for s, d in enumerate(config.decision_layers)}
    stock_mask = decoder._stock_mask(hidden, attention_mask, cache, positions)
    mask, tables, position_ids = stock_mask, (prompt.cos[:, :length], prompt.sin[:, :length]), positions.text
    layout: Layout | None = None
    buffer: torch.Tensor | None = None
    pending: dict = {}
    run = RecyclingRun(hidden, prompt, [], [], [], [], [], [], [])
    h = hidden
    for i, layer in enumerate(decoder.layers):
        if i in decisions:
            stage = decisions[i]
            if layout is None:
                buffer = with_trash_row(torch.cat([h, h.new_zeros(batch, extended - length, dim)], dim=1))
                active_now = positions_x[None].expand(batch, -1) < length
            else:
                layout.scatter_(buffer, h)
                active_now = layout.active()
            scores = pending.pop(stage) if stage in pending else score(layer, h, layout, tables, stage)
            candidates = visual_x & active_now
            chosen = candidates if scores is None else select_top_k(scores, candidates, prompt.keep[stage])
            pruned = candidates & ~chosen
            for b in range(batch):  # the official code is batch size 1: every sample recycles on its own
                rows = torch.nonzero(pruned[b]).flatten()
                if rows.numel() == 0:
                    continue
                rows = rows[torch.argsort(order[b, rows])]  # sequence order
                merged = scorer.recycle(buffer[b, rows], scores[b, rows])
                buffer[b, starts[stage] : starts[stage] + merged.shape[0]] = merged.to(buffer.dtype)
            active = (active_now & (~visual_x | chosen)) | slot_of[stage]
            if decoder.record_scores:
                run.scored.append((candidates, scores))
            run.selections.append(chosen)
            run.stage_active.append(active)
            layout = Layout.from_order(active, order)
            h = layout.gather(buffer)
            mask, tables, key_valid, shift = compact_stage(layout, h)
            position_ids = None
            run.prompt_keys.append(key_valid)
            run.layouts.append(layout)
            run.position_shift.append(shift)
        if i in score_points and score_points[i] != decisions.get(i):
            pending[score_points[i]] = score(layer, h, layout, tables, score_points[i])
        run.layer_stage.append(-1 if layout is None else len(run.prompt_keys) - 1)
        h = decoder._run_layer(layer, h, mask, tables, position_ids, cache, use_cache, kwargs)
    if layout is not None:
        layout.scatter_(buffer, h)
        h = buffer[:, :length]
    return dataclasses.replace(run, hidden=h)

