"""The routed decoder loop: decisions, active sets, compact/scatter and per-layer caches.

The engine runs the model's own decoder layers on compact hidden states (the active tokens
of the stage, in original order) with the rotary tables gathered at the tokens' original
positions and a mask built for the compact sequence. It never patches attention, so every
attention implementation the layer supports keeps working, and the KV cache of layer i ends
up holding exactly that layer's active tokens.

One forward pass = one call of `prefill` (or `decode`); everything it learns lives in local
variables and in the `DecodeState` it returns, which the caller keys by the cache object.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from reroute.runtime.adapter import DecoderAdapter, LayerInjections, Positions
from reroute.runtime.compat import Compat
from reroute.runtime.layout import Layout, with_trash_row
from reroute.runtime.masks import compact_decode_mask, compact_prefill_mask, key_padding
from reroute.runtime.recycling import recycling_prefill, recycling_refusal
from reroute.runtime.static_cache import decode_masks, key_room, pad_key_slots
from reroute.registry import ACTIONS, SCORERS
from reroute.runtime.decision import RoutingPlan, ScoringInputs, select_top_k
from reroute.runtime.trace import DecisionScores, SampleTrace, Trace


@dataclass(frozen=True)
class DecodeState:
    """What decode steps need from a routed prefill (one per cache, so per generate call).

    prompt_length: positions of the prompt (layer 0's cache length after prefill).
    layer_stage: per layer, an index into ``prompt_keys``; -1 for layers whose cache holds
        the whole prompt (the stock mask applies there).
    prompt_keys: per compact stage, ``(B, n)`` bool: which entries of that stage's caches
        are real keys (not padding, not slack).
    layouts: per compact stage, the prompt positions its layers ran on, as the action chose
        them (what ``output_hidden_states`` / ``output_attentions`` scatter back, `reroute.runtime.outputs`).
    position_shift: per compact stage, ``(B,)``: how far its decode positions sit below the stock ones
        (a recycling scorer renumbers them, docs/semantics.md §21); empty: positions never change.
    """

    prompt_length: int
    layer_stage: tuple[int, ...]
    prompt_keys: tuple[torch.Tensor, ...]
    layouts: tuple[Layout, ...]
    position_shift: tuple[torch.Tensor, ...] = ()

    def layer_layouts(self) -> list[Layout | None]:
        """Per layer, the compact layout it ran on in the prefill; None where it ran the whole prompt."""
        return [None if s < 0 else self.layouts[s] for s in self.layer_stage]

    def past_length(self, cache) -> int:
        """Positions before the next token: the full prompt plus the tokens decoded so far.

        Layer 0's cache holds the whole prompt, or, after a vision stage, only the tokens that
        entered the decoder; the decoded tokens are what it holds beyond its prompt entries.
        """
        first = self.layer_stage[0]
        cached_prompt = self.prompt_length if first < 0 else self.prompt_keys[first].shape[1]
        return self.prompt_length + cache.get_seq_length() - cached_prompt


@dataclass(frozen=True)
class _Prompt:
    """Per-prefill constants, full length with the trash row appended (see `reroute.runtime.layout`).

    visual, pad_valid: ``(B, L + 1)`` bool; a token a vision stage removed is neither visual nor
    valid (it is never a key, a candidate or active); present: ``(B, L + 1)`` bool, False
    exactly on those tokens (and the trash row); cos, sin: ``(B, L + 1, head_dim)`` rotary tables at
    the original positions; query_position: ``(B,)`` each sample's last non-padding token;
    keep: per decision, ``(B,)`` keep counts (0 for a sample without visual tokens).
    """

    length: int
    num_visual: tuple[int, ...]
    visual: torch.Tensor
    pad_valid: torch.Tensor
    present: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    query_position: torch.Tensor
    keep: tuple[torch.Tensor, ...]


class RoutedDecoder:
    """Runs one VLM's decoder stack under a routing plan (a `reroute.RoutingConfig`)."""

    def __init__(
        self, backbone: DecoderAdapter, text_model: nn.Module, config: RoutingPlan, record_scores: bool = False
    ) -> None:
        self.backbone = backbone
        self.record_scores = record_scores  # scores on request (viz): the trace keeps every decision's scores
        self.text_model = text_model
        self.config = config
        self.action = ACTIONS.get(config.action)
        self.scorer = SCORERS.get(config.scorer)
        self.text_config = text_model.config
        self.layers = backbone.layers(text_model)
        self.norm = backbone.final_norm(text_model)
        self.rotary = backbone.rotary(text_model)
        # how this model's decoder is driven on the installed transformers (decided once, here)
        self.compat = Compat.for_model(self.layers[0], self.text_config)
        if self.scorer.recycles and (refusal := recycling_refusal(backbone)) is not None:
            raise ValueError(refusal)

    # ------------------------------------------------------------------ helpers
    def _run_layer(self, layer, hidden, mask, position_embeddings, position_ids, cache, use_cache, kwargs):
        return self.compat.run_layer(layer, hidden, mask, position_embeddings, position_ids, cache, use_cache, kwargs)

    def _stock_mask(self, hidden, attention_mask, cache, positions: Positions):
        return self.compat.causal_mask(self.text_config, hidden, attention_mask, cache, positions.text)

    # ------------------------------------------------------------------ prefill
    def prefill(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None,
        positions: Positions,
        cache,
        use_cache: bool,
        visual: torch.Tensor,
        kwargs: dict,
        present: torch.Tensor | None = None,
        injections: LayerInjections | None = None,
    ) -> tuple[torch.Tensor, DecodeState, Trace]:
        """Routed prefill of ``hidden`` (``(B, L, D)`` merged embeddings); returns the normed last hidden state.

        ``present``: ``(B, L)`` bool, False at the visual tokens a vision stage removed. They
        are removed before layer 0 (no layer runs them, no cache holds them) and every other
        token keeps its original position. ``injections``: what the family adds after its first
        layers (taken from ``kwargs`` when not given); only the tokens that ran a layer receive its.
        """
        if self.scorer.recycles:  # opt-in: SparseVLM v1.5 adds merged tokens and renumbers positions (§21)
            return self._prefill_recycling(hidden, attention_mask, positions, cache, use_cache, visual, kwargs)
        config = self.config
        length = hidden.shape[1]
        if injections is None:  # DeepStack (Qwen3-VL); None elsewhere
            injections = self.backbone.pop_injections(kwargs, hidden)
        prompt = self._prompt(hidden, attention_mask, positions, visual, present)
        # per-token values a scorer derives once from the decoder's input (SparseVLM's raters); None for most
        prepared = self.scorer.prepare(hidden, prompt.visual[:, :length], prompt.pad_valid[:, :length])
        prepared = None if prepared is None else with_trash_row(prepared)
        stock_mask = self._stock_mask(hidden, attention_mask, cache, positions)
        full_stage = (stock_mask, (prompt.cos[:, :length], prompt.sin[:, :length]), positions.text)

        decisions = {d: s for s, d in enumerate(config.decision_layers)}
        # The scorer may read an earlier layer's attention (Nüwa: the layer before the decision).
        score_points = {d + self.scorer.attention_layer_offset: s for s, d in enumerate(config.decision_layers)}
        pending: dict[int, torch.Tensor | None] = {}  # per decision scored ahead of it: its scores
        per_layer = config.execution == "per_layer"
        layout: Layout | None = None  # None: the whole prompt is active
        buffer: torch.Tensor | None = None  # full-length states (+ trash row) while a stage is compact
        mask, position_embeddings, position_ids = full_stage
        stage_active: list[torch.Tensor] = []  # per decision, (B, L) active positions
        selections: list[torch.Tensor] = []  # per decision, (B, L) selected visual positions
        scored: list[tuple] = []  # scores on request (viz): per decision, (candidates, scores), both (B, L)
        layer_stage: list[int] = []  # per layer, index into prompt_keys and layouts (-1: full prompt)
        prompt_keys: list[torch.Tensor] = []  # per compact stage, (B, n) valid keys of its caches
        layouts: list[Layout] = []  # per compact stage, the positions its layers run on
        # A scorer that compares a layer's input with the previous layer's (V2Drop) gets a full-length
        # copy of the states entering the layer before each of its score points.
        previous_points = {i - 1 for i in score_points if i >= 1} if self.scorer.reads_previous_layer else set()
        previous: _Previous | None = None
        last_scores: torch.Tensor | None = None  # the previous decision's scores (docs/semantics.md §20)
        room = key_room(cache)  # a static cache's layers hold empty slots after their prompt entries
        h = hidden
        if not bool(prompt.present[:, :length].all()):
            # The vision stage's removals act before layer 0: the first stage is already compact.
            layout = Layout.from_active(prompt.present[:, :length])
            buffer = with_trash_row(hidden)
            h = layout.gather(buffer)
            mask, position_embeddings, position_ids, key_valid = self._compact_stage(layout, prompt, hidden.dtype, room)
            prompt_keys.append(key_valid)
            layouts.append(layout)

        for i, layer in enumerate(self.layers):
            if i in decisions:
                # Bring the full-length states up to date: deferred/removed rows keep their last state.
                if layout is None:
                    buffer = with_trash_row(h)
                elif not per_layer:
                    layout.scatter_(buffer, h)
                stage = decisions[i]
                scores = (
                    pending.pop(stage)
                    if stage in pending
                    else self._score(layer, h, layout, buffer, prompt, stage, previous, prepared, last_scores)
                )
                last_scores = scores
                visual_now = prompt.visual[:, :length]
                active_now = layout.active() if layout is not None else torch.ones_like(visual_now)
                candidates = self.action.candidates(visual_now, active_now)
                # No scores: the decision keeps every candidate (keep ratio 1.0, say).
                chosen = candidates if scores is None else select_top_k(scores, candidates, prompt.keep[stage])
                if self.record_scores:  # scores on request (viz)
                    scored.append((candidates, scores))
                # text and padding always run; what the vision stage removed never does
                active = self.action.next_active(visual_now, active_now, chosen) & prompt.present[:, :length]
                selections.append(chosen)
                stage_active.append(active)
                layout = Layout.from_active(active)
                if layout.is_full:  # nothing to compact (keep ratio 1.0, or no visual token anywhere)
                    layout, h = None, buffer[:, :length]
                    mask, position_embeddings, position_ids = full_stage
                else:
                    h = layout.gather(buffer)
                    mask, position_embeddings, position_ids, key_valid = self._compact_stage(layout, prompt, hidden.dtype, room)
                    prompt_keys.append(key_valid)
                    layouts.append(layout)
            elif per_layer and layout is not None:
                h = layout.gather(buffer)
            if i in score_points and score_points[i] != decisions.get(i):
                # Scored ahead of its decision, on this layer's input, after any decision taken here.
                if layout is None:
                    buffer = with_trash_row(h)
                elif not per_layer:
                    layout.scatter_(buffer, h)
                pending[score_points[i]] = self._score(
                    layer, h, layout, buffer, prompt, score_points[i], previous, prepared, last_scores
                )

            if i in previous_points:
                states = with_trash_row(h) if layout is None else _current(buffer, layout, h, per_layer)
                ran = torch.ones_like(prompt.visual[:, :length]) if layout is None else layout.active()
                previous = _Previous(states, with_trash_row(ran), self.layers[i])
            layer_stage.append(-1 if layout is None else len(prompt_keys) - 1)
            h = self._run_layer(layer, h, mask, position_embeddings, position_ids, cache, use_cache, kwargs)
            if injections is not None and i < len(injections.after_layer):
                # part of layer i: only the tokens that ran it receive it (docs/semantics.md)
                h = _inject(h, layout, injections.visual[:, :length], injections.after_layer[i][:, :length])
            if per_layer and layout is not None:
                layout.scatter_(buffer, h)

        if layout is not None:
            if not per_layer:
                layout.scatter_(buffer, h)
            h = buffer[:, :length]
        h = self.norm(h)

        trace = self._trace(prompt, stage_active, selections, layer_stage, prompt_keys, scored)
        state = DecodeState(
            prompt_length=length, layer_stage=tuple(layer_stage), prompt_keys=tuple(prompt_keys), layouts=tuple(layouts)
        )
        return h, state, trace

    def _prefill_recycling(self, hidden, attention_mask, positions, cache, use_cache, visual, kwargs):
        """`prefill` for a scorer that recycles pruned tokens (`reroute.runtime.recycling`)."""
        run = recycling_prefill(self, hidden, attention_mask, positions, cache, use_cache, visual, kwargs)
        # the trace's selections and scores name prompt positions: merged tokens have none (they count in visual_per_layer)
        prompt_only = torch.arange(run.prompt.length, device=hidden.device) < hidden.shape[1]
        selections = [chosen & prompt_only for chosen in run.selections]
        scored = [(candidates & prompt_only, scores) for candidates, scores in run.scored]
        trace = self._trace(run.prompt, run.stage_active, selections, run.layer_stage, run.prompt_keys, scored)
        # the layers before the first decision cache the prompt (the trace's prompt also spans the merged slots)
        full = tuple(hidden.shape[1] if st < 0 else n for st, n in zip(run.layer_stage, trace.cache_lengths))
        trace = dataclasses.replace(trace, cache_lengths=full)
        state = DecodeState(
            prompt_length=hidden.shape[1], layer_stage=tuple(run.layer_stage), prompt_keys=tuple(run.prompt_keys),
            layouts=tuple(run.layouts), position_shift=tuple(run.position_shift),
        )  # fmt: skip
        return self.norm(run.hidden), state, trace

    def _compact_stage(self, layout: Layout, prompt: _Prompt, dtype: torch.dtype, room: int = 0):
        """``(mask, position_embeddings, position_ids, key_valid)`` of a stage that runs only
        ``layout``'s active rows: its keys are the compact rows that are not padding, and each row
        keeps its prompt position (rotary tables gathered, so no position ids). ``room``: empty key
        slots a static cache's layers return after the compact rows (masked)."""
        key_valid = layout.valid & layout.gather(prompt.pad_valid)
        mask = pad_key_slots(compact_prefill_mask(key_valid, self.text_config._attn_implementation, dtype), room)
        return mask, (layout.gather(prompt.cos), layout.gather(prompt.sin)), None, key_valid

    def _prompt(self, hidden, attention_mask, positions: Positions, visual, present) -> _Prompt:
        batch, length = hidden.shape[:2]
        pad_valid = (
            key_padding(attention_mask)  # 2-D, or a 4-D mask only the stock mask reads (docs/semantics.md §18)
            if attention_mask is not None
            else torch.ones(batch, length, dtype=torch.bool, device=hidden.device)
        )
        if present is None:
            present = torch.ones(batch, length, dtype=torch.bool, device=hidden.device)
        pad_valid = pad_valid & present
        visual = visual & pad_valid
        num_visual = visual.sum(dim=1).tolist()
        keep = tuple(
            torch.tensor([self.config.keep_counts(n)[s] if n else 0 for n in num_visual], device=hidden.device)
            for s in range(self.config.num_decisions)
        )
        cos, sin = self.compat.rotary_tables(self.rotary, hidden, positions.rope)
        cos, sin = cos.expand(batch, -1, -1), sin.expand(batch, -1, -1)  # positions may be shared (1, L)
        return _Prompt(
            length=length,
            num_visual=tuple(num_visual),
            visual=with_trash_row(visual),
            pad_valid=with_trash_row(pad_valid),
            present=with_trash_row(present),
            cos=with_trash_row(cos),
            sin=with_trash_row(sin),
            query_position=(pad_valid * torch.arange(length, device=hidden.device)).argmax(dim=1),
            keep=keep,
        )

    def _score(
        self,
        layer,
        h,
        layout: Layout | None,
        buffer,
        prompt: _Prompt,
        stage: int,
        previous: _Previous | None = None,
        prepared: torch.Tensor | None = None,
        last_scores: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """``(B, L)`` scores of decision ``stage`` from ``layer``'s attention on its input (docs/semantics.md §2, §3);
        ``None`` when the decision keeps every candidate (nothing to score).

        The action says which tokens are candidates and keys. When the keys are exactly the
        compact sequence (``remove``), the compact states are scored; otherwise the full-length
        buffer, which holds every token's latest state (a deferred token's is the one it had
        when it was last deferred).
        """
        length = prompt.length
        visual = prompt.visual[:, :length]
        active = layout.active() if layout is not None else torch.ones_like(visual)
        candidates = self.action.candidates(visual, active)
        # scores on request (viz): recorded runs score even when every candidate is kept (same selection)
        if not self.record_scores and bool((prompt.keep[stage] >= candidates.sum(dim=1)).all()):
            return None
        keys = self.action.keys(visual, active) & prompt.present[:, :length]
        if layout is not None and torch.equal(keys, active):
            view = layout.index
            hidden_v = h
            cos_v, sin_v = layout.gather(prompt.cos), layout.gather(prompt.sin)
            key_valid = layout.valid & layout.gather(prompt.pad_valid)
        else:
            view = torch.arange(length, device=h.device).expand(h.shape[0], -1)
            hidden_v = buffer[:, :length]
            cos_v, sin_v = prompt.cos[:, :length], prompt.sin[:, :length]
            key_valid = prompt.pad_valid[:, :length] & keys
        query_index = (view == prompt.query_position[:, None]).int().argmax(dim=1)
        # ``view`` indexes the full-length (trash-row) tensors, so every per-token field is one gather
        in_view = prompt.visual.gather(1, view)
        inputs = ScoringInputs(
            layer,
            hidden_v,
            cos_v,
            sin_v,
            key_valid,
            query_index,
            self.backbone.apply_rotary,
            visual=in_view & key_valid,
            candidates=with_trash_row(candidates).gather(1, view) & key_valid,
            keep=prompt.keep[stage],
            decision=stage,
            params=self.config.scorer_parameters,
            previous_hidden=None if previous is None else previous.states.gather(1, view[..., None].expand(*view.shape, previous.states.shape[-1])),
            sample_length=prompt.pad_valid[:, :length].sum(dim=1),
            prepared=None if prepared is None else prepared.gather(1, view),
            previous_layer=None if previous is None else previous.layer,
            ran_previous=None if previous is None else previous.ran.gather(1, view),
            previous_scores=None if last_scores is None else with_trash_row(last_scores).gather(1, view),
            final_norm=self.norm,
        )
        scores_view = self.scorer.score(inputs).float()
        scores = torch.full((h.shape[0], length + 1), float("-inf"), device=h.device)
        scores.scatter_(1, view, scores_view)  # slack lands on the trash column
        return scores[:, :length]

    def _trace(self, prompt: _Prompt, stage_active, selections, layer_stage, prompt_keys, scored=()) -> Trace:
        config = self.config
        length = prompt.length
        visual = prompt.visual[:, :length]
        num_visual = prompt.num_visual
        decisions = config.decision_layers
        stage_visual = [(a & visual).sum(dim=1).tolist() for a in stage_active]
        stage_tokens = [a.sum(dim=1).tolist() for a in stage_active]
        entering = prompt.present[:, :length].sum(dim=1).tolist()  # tokens before the first decision
        selected = [[tuple(torch.nonzero(sel[b]).flatten().tolist()) for sel in selections] for b in range(len(num_visual))]
        samples = []
        for b, n_vis in enumerate(num_visual):
            visual_per_layer, tokens_per_layer = [], []
            for i in range(len(self.layers)):
                s = config.stage_of_layer(i)
                visual_per_layer.append(n_vis if s < 0 else stage_visual[s][b])
                tokens_per_layer.append(entering[b] if s < 0 else stage_tokens[s][b])
            samples.append(
                SampleTrace(
                    routed=n_vis > 0,
                    num_visual=n_vis,
                    visual_per_layer=tuple(visual_per_layer),
                    tokens_per_layer=tuple(tokens_per_layer),
                    selected=tuple(selected[b]),
                    scores=_recorded_scores(scored, b) if self.record_scores else None,  # scores on request (viz)
                )
            )
        cache_lengths = tuple(length if st < 0 else prompt_keys[st].shape[1] for st in layer_stage)
        return Trace(action=config.action, decision_layers=decisions, samples=tuple(samples), cache_lengths=cache_lengths)

    # ------------------------------------------------------------------ decode
    def decode(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None,
        positions: Positions,
        cache,
        use_cache: bool,
        state: DecodeState,
        kwargs: dict,
    ) -> torch.Tensor:
        """Decode step(s) over per-layer caches of different lengths; returns the normed last hidden state."""
        batch, num_new, _ = hidden.shape
        self.backbone.pop_injections(kwargs, hidden)  # decode steps bring no visual tokens: nothing to add
        past = state.past_length(cache)  # the full prompt + decoded so far
        decoded = past + num_new - state.prompt_length
        if attention_mask is None:
            attention_mask = torch.ones(batch, past + num_new, dtype=torch.long, device=hidden.device)
        if attention_mask.shape[-1] != past + num_new:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[-1]} positions but the routed cache plus the new tokens "
                f"cover {past + num_new}; pass the full-length attention mask, as generate() does"
            )
        decoded_valid = key_padding(attention_mask)[:, state.prompt_length :]
        position_embeddings = self.compat.rotary_tables(self.rotary, hidden, positions.rope)
        # layers whose cache holds the whole prompt take the stock mask (none after a vision stage)
        stock_mask = self._stock_mask(hidden, attention_mask, cache, positions) if -1 in state.layer_stage else None
        implementation = self.text_config._attn_implementation
        stage_masks = [
            compact_decode_mask(keys, decoded_valid, num_new, implementation, hidden.dtype) for keys in state.prompt_keys
        ]
        assert decoded_valid.shape[1] == decoded
        # renumbered stages (a recycling scorer, docs/semantics.md §21): the stock position minus the stage's shift
        stage_tables = [
            self.compat.rotary_tables(self.rotary, hidden, positions.rope - shift[:, None]) for shift in state.position_shift
        ]
        return self._decode_layers(
            hidden, stock_mask, stage_masks, position_embeddings, positions, cache, use_cache, state, kwargs, stage_tables
        )

    def decode_static(
        self, hidden: torch.Tensor, full_mask: torch.Tensor, positions: Positions, cache, use_cache: bool,
        state: DecodeState, kwargs: dict,
    ) -> torch.Tensor:
        """Decode step(s) on a `reroute.runtime.static_cache.RoutedStaticCache` (docs/semantics.md §17).

        ``full_mask``: ``(B, 1, T, max_cache_len)``, the stock mask over full positions that transformers
        builds for this cache. Every shape here is static and no tensor value is read, so a compiled
        step neither breaks its graph nor recompiles as the cache fills.
        """
        self.backbone.pop_injections(kwargs, hidden)  # decode steps bring no visual tokens: nothing to add
        position_embeddings = self.compat.rotary_tables(self.rotary, hidden, positions.rope)
        implementation = self.text_config._attn_implementation
        stage_masks = decode_masks(full_mask, state.prompt_keys, state.prompt_length, implementation, hidden.dtype)
        return self._decode_layers(hidden, full_mask, stage_masks, position_embeddings, positions, cache, use_cache, state, kwargs)

    def _decode_layers(
        self, hidden, stock_mask, stage_masks, position_embeddings, positions, cache, use_cache, state, kwargs, stage_tables=()
    ):  # fmt: skip
        h = hidden
        for i, layer in enumerate(self.layers):
            stage = state.layer_stage[i]
            mask = stock_mask if stage < 0 else stage_masks[stage]
            tables = stage_tables[stage] if stage >= 0 and stage_tables else position_embeddings
            h = self._run_layer(layer, h, mask, tables, positions.text, cache, use_cache, kwargs)
        return self.norm(h)


@dataclass(frozen=True)
class _Previous:
    """The layer before a score point, as a scorer that reads it sees it (docs/semantics.md §19):
    every token's state entering it and whether the token took part in it (both ``(B, L + 1, ...)``)."""

    states: torch.Tensor
    ran: torch.Tensor
    layer: nn.Module


def _current(buffer: torch.Tensor, layout: Layout, h: torch.Tensor, per_layer: bool) -> torch.Tensor:
    """A full-length copy of every token's latest state (``buffer`` with the compact ``h`` written in)."""
    current = buffer.clone()
    if not per_layer:  # per-layer execution keeps the buffer current itself
        layout.scatter_(current, h)
    return current


def _inject(h: torch.Tensor, layout: Layout | None, visual: torch.Tensor, added: torch.Tensor) -> torch.Tensor:
    """Add ``added`` (``(B, L, D)``) at the ``visual`` positions of the states that ran the layer (compact or full)."""
    if layout is not None:
        visual, added = layout.gather(with_trash_row(visual)), layout.gather(with_trash_row(added))
    return torch.where(visual[..., None], h + added, h)


def _recorded_scores(scored, b: int) -> tuple[DecisionScores, ...]:
    """Scores on request (viz): sample ``b``'s candidates (original positions) and their scores, per decision."""
    out = []
    for candidates, scores in scored:
        keep = candidates[b]
        positions = torch.nonzero(keep).flatten()
        out.append(DecisionScores(positions=positions.cpu(), scores=scores[b][keep].float().cpu()))
    return tuple(out)
