"""``output_hidden_states`` / ``output_attentions`` of a routed forward, in the stock shapes.

The routed decoder runs each layer on the tokens that take part in it (a compact sequence);
this module records what each layer returned and puts it back at the tokens' original
positions:

- hidden states: ``num_layers + 1`` tensors ``(B, L, D)``: the embeddings, then the state of
  every token after each layer; the last one is the final normed state (as stock). A token
  that did not take part in a layer (deferred by ``reroute``, removed by ``remove``) holds the
  state it carried through that layer unchanged: its residual-path state.
- attentions (eager attention only; SDPA computes no weights): one ``(B, H, L_q, L_k)`` tensor
  per layer over the original positions. Rows and columns of tokens that did not take part in
  the layer are 0: they were neither queries nor keys there.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from reroute.runtime.compat import layer_output
from reroute.runtime.layout import Layout, with_trash_row


@dataclass
class Recorded:
    """What each decoder layer returned, in call order (compact where the layer ran compact)."""

    hidden: list[torch.Tensor] = field(default_factory=list)
    attentions: list[torch.Tensor | None] = field(default_factory=list)


@contextlib.contextmanager
def recording(layers: nn.ModuleList, hidden: bool, attentions: bool):
    """Record every decoder layer's output (and its attention weights) while the block runs."""
    record = Recorded()
    handles = []
    if hidden:
        handles += [layer.register_forward_hook(lambda m, a, out: record.hidden.append(layer_output(out))) for layer in layers]
    if attentions:  # the attention module returns (output, weights); weights are None outside eager
        hook = lambda m, a, out: record.attentions.append(out[1])  # noqa: E731
        handles += [layer.self_attn.register_forward_hook(hook) for layer in layers]
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


def prefill_hidden_states(
    embeds: torch.Tensor, record: Recorded, layer_layouts: list[Layout | None], final: torch.Tensor, injections=None
) -> list[torch.Tensor]:
    """Full-length state after every layer: compact outputs scattered over the previous state.

    ``injections`` (a `LayerInjections`, Qwen3-VL's DeepStack): the stock model records a layer's
    output before its injection, and the next layer's input has it (for the tokens that ran the layer).
    """
    states = [embeds]
    full = embeds
    for i, (out, layout) in enumerate(zip(record.hidden, layer_layouts)):
        if layout is None:
            full = out
        else:
            buffer = with_trash_row(full).contiguous()
            layout.scatter_(buffer, out)
            full = buffer[:, : full.shape[1]]
        states.append(full)
        if injections is not None and i < len(injections.after_layer):
            length = full.shape[1]
            ran = injections.visual[:, :length] & (True if layout is None else layout.active())
            full = torch.where(ran[..., None], full + injections.after_layer[i][:, :length], full)
    states[-1] = final
    return states


def scatter_attention(
    weights: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, num_rows: int, num_cols: int
) -> torch.Tensor:
    """``(B, H, q, k)`` weights at row / column positions ``(B, q)`` / ``(B, k)`` (``num_rows`` /
    ``num_cols`` mark slack) into a zero ``(B, H, num_rows, num_cols)`` tensor."""
    batch, heads = weights.shape[:2]
    full = weights.new_zeros(batch, heads, num_rows + 1, num_cols + 1)
    for b in range(batch):
        full[b][:, rows[b][:, None], cols[b][None, :]] = weights[b]
    return full[:, :, :num_rows, :num_cols]


def prefill_attentions(record: Recorded, layer_layouts: list[Layout | None], length: int) -> list[torch.Tensor]:
    out = []
    for weights, layout in zip(record.attentions, layer_layouts):
        if layout is None:
            out.append(weights)
        else:
            out.append(scatter_attention(weights, layout.index, layout.index, length, length))
    return out


def decode_attentions(
    record: Recorded, layer_layouts: list[Layout | None], prompt_length: int, past: int, num_new: int
) -> list[torch.Tensor]:
    """New tokens' rows over all ``past + num_new`` positions; a compact layer's cache holds its
    stage's prompt positions, then every token decoded since."""
    out = []
    total = past + num_new
    for weights, layout in zip(record.attentions, layer_layouts):
        if layout is None:
            out.append(weights)
            continue
        batch = weights.shape[0]
        after = torch.arange(prompt_length, total, device=weights.device).expand(batch, -1)
        cols = torch.cat([layout.index.masked_fill(layout.index == layout.length, total), after], dim=1)
        rows = torch.arange(num_new, device=weights.device).expand(batch, -1)
        out.append(scatter_attention(weights, rows, cols, num_new, total))
    return out


def decode_hidden_states(embeds: torch.Tensor, record: Recorded, final: torch.Tensor) -> list[torch.Tensor]:
    """States of tokens that ran every layer (decode steps): their embeddings, each layer's output, the normed last."""
    return [embeds, *record.hidden[:-1], final]


def append_decoded(
    states: list[torch.Tensor] | None,
    attentions: list[torch.Tensor] | None,
    embeds: torch.Tensor,
    record: Recorded,
    final: torch.Tensor,
    layer_layouts: list[Layout | None],
    prompt_length: int,
) -> tuple[list[torch.Tensor] | None, list[torch.Tensor] | None]:
    """A prefill's outputs followed by the ``embeds.shape[1]`` tokens decoded in the same forward
    (generated or candidate tokens inside generate()): every state gains their rows; every
    attention map gains their rows over all positions, and the prompt's rows zero columns for them."""
    num_new = embeds.shape[1]
    if states is not None:
        states = [torch.cat([a, b], dim=1) for a, b in zip(states, decode_hidden_states(embeds, record, final))]
    if attentions is not None:
        rows = decode_attentions(record, layer_layouts, prompt_length, prompt_length, num_new)
        attentions = [torch.cat([nn.functional.pad(a, (0, num_new)), b], dim=2) for a, b in zip(attentions, rows)]
    return states, attentions


def select_hidden_states(states: list[torch.Tensor], requested) -> tuple:
    """``output_hidden_states`` may be True or the indices of the states wanted (others are None, as stock)."""
    if isinstance(requested, bool):
        return tuple(states)
    wanted = [requested] if isinstance(requested, int) else list(requested)
    keep = {i % len(states) for i in wanted if -len(states) <= i < len(states)}
    return tuple(s if i in keep else None for i, s in enumerate(states))
