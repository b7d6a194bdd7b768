"""Invariants of a scoring rule through the real engine (docs/semantics.md §3, §5, §20), shared by the
tests of the rules that are not one attention row (random, DART, V2Drop).

- `reference_run`: the slow full-length reference (`tests/helpers/reference.py`) of one unpadded
  sample, whose decisions a test computes itself from the reference's own states (`Context`),
  decision after decision; the engine must take the same decisions and give the same logits.
- `assert_batch_equals_alone`, `assert_generate_equals_reference`, `assert_keep_all_is_stock`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch

import reroute
from reroute import RoutingConfig
from tests.helpers.batches import mixed_batch, mixed_prompts
from tests.helpers.harness import (
    decoder_inputs,
    rotary_positions,
    routed,
    sample_injections,
    visual_mask,
)
from tests.helpers.reference import _rotary_tables, reference_forward

ATOL = 3e-5


@cache
def tiny_model(family):
    """One tiny model per family, shared by the tests (a test never changes it: routing is undone on exit)."""
    return family.make_model()


@dataclass(frozen=True)
class Context:
    """What one decision of one unpadded sample reads, at full length, from the reference run."""

    text_model: torch.nn.Module
    config: RoutingConfig
    decision: int
    layer: int
    states: list  # states[j]: every token's state entering layer j (j = 0..layer)
    active: list  # active[j]: the positions that take part in layer j (j < layer)
    visual: list  # the sample's visual positions (the query excluded)
    candidates: list  # the positions this decision selects from
    keep: int
    tables: tuple  # the rotary tables the stock decoder hands its layers
    length: int


Select = Callable[[Context], list]


def _prompt(model, inputs: dict):
    captured = decoder_inputs(model, inputs)
    embeds = captured["inputs_embeds"][0]
    length = embeds.shape[0]
    visual = visual_mask(model, inputs)[0].tolist()
    visual[length - 1] = False  # the query is never a candidate
    return captured, embeds, length, visual


@torch.no_grad()
def reference_run(model, inputs: dict, config: RoutingConfig, select: Select):
    """(decisions, logits) of the reference on one unpadded sample, each decision by ``select``."""
    captured, embeds, length, visual = _prompt(model, inputs)
    text_model = model.model.language_model
    positions = rotary_positions(captured, 0, length, 0)
    injections = sample_injections(captured, 0, 0, length)
    visual_positions = [j for j in range(length) if visual[j]]
    text = {j for j in range(length) if not visual[j]}
    tables, _ = _rotary_tables(text_model, embeds, positions)
    layers = config.decision_layers
    found: list = []
    for s, d in enumerate(layers):
        partial = None if s == 0 else RoutingConfig(config.action, layers[:s], config.keep_ratios[:s])
        outputs: list = []
        reference_forward(text_model, positions, embeds, visual, partial, decisions=found, states=outputs, injections=injections)

        def active(j: int, s: int = s) -> list:
            stages = [t for t in range(s) if layers[t] <= j]
            return list(range(length)) if not stages else sorted(text | set(found[stages[-1]]))

        states = [embeds]
        for j in range(d):
            h = outputs[j]
            if injections is not None and j < len(injections):
                ran = torch.zeros(length, 1, dtype=torch.bool)
                ran[active(j)] = True
                h = torch.where(ran, h + injections[j], h)
            states.append(h)
        if config.action == "reroute" or s == 0:
            candidates = visual_positions
        else:
            candidates = sorted(found[s - 1])
        keep = config.keep_counts(len(visual_positions))[s]
        ctx = Context(
            text_model, config, s, d, states, [active(j) for j in range(d)], visual_positions, candidates, keep, tables, length
        )
        found.append(sorted(select(ctx)) if keep < len(candidates) else candidates)
    hidden, _ = reference_forward(text_model, positions, embeds, visual, config, decisions=found, injections=injections)
    return found, model.lm_head(hidden)


def top_k(scores: dict, candidates: list, keep: int) -> list:
    """The ``keep`` candidates with the highest scores; ties to the lower position (docs/semantics.md §2)."""
    return sorted(sorted(candidates, key=lambda j: (-float(scores[j]), j))[:keep])


@torch.no_grad()
def assert_engine_equals_reference(family, model, config: RoutingConfig, select: Select, seed: int = 4) -> None:
    inputs = family.make_batch([family.make_prompt(2, seed=seed)])
    decisions, logits = reference_run(model, inputs, config, select)
    out, trace = routed(model, config, inputs)
    assert [list(chosen) for chosen in trace.samples[0].selected] == decisions
    torch.testing.assert_close(out.logits[0], logits, atol=ATOL, rtol=0)


@torch.no_grad()
def assert_batch_equals_alone(family, model, config: RoutingConfig, new: int = 4) -> None:
    """A padded batch (2, 1 and 0 images, different lengths) equals each sample run alone: a
    right-padded forward (logits and decisions), and a left-padded generate() (tokens and decisions;
    generate() passes positions that count only real tokens, as a sample alone has them)."""
    inputs = mixed_batch(family, "right")
    out, trace = routed(model, config, inputs)
    left = mixed_batch(family, "left")
    with reroute.apply(model, config) as handle:
        batch_ids = model.generate(**left, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    generated = handle.trace
    for b, prompt in enumerate(mixed_prompts(family)):
        alone_inputs = family.make_batch([prompt])
        alone, alone_trace = routed(model, config, alone_inputs)
        real = torch.nonzero(inputs["attention_mask"][b]).flatten()
        torch.testing.assert_close(out.logits[b, real], alone.logits[0], atol=ATOL, rtol=0)
        decisions = [list(chosen) for chosen in alone_trace.samples[0].selected]
        assert [list(chosen) for chosen in trace.samples[b].selected] == decisions
        with reroute.apply(model, config):
            alone_ids = model.generate(**alone_inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        assert torch.equal(batch_ids[b, -new:], alone_ids[0, -new:])
        offset = int(torch.nonzero(left["attention_mask"][b])[0])
        assert [[j - offset for j in chosen] for chosen in generated.samples[b].selected] == decisions


@torch.no_grad()
def assert_generate_equals_reference(family, model, config: RoutingConfig, new: int = 5) -> None:
    """Greedy generate() == the reference over prompt + generated text with the prefill's decisions."""
    inputs = family.make_batch([family.make_prompt(2, seed=4)])
    # no min_new_tokens: it masks EOS, which the reference's argmax may pick
    with reroute.apply(model, config) as handle:
        ids = model.generate(**inputs, max_new_tokens=new, do_sample=False)
    decisions = [list(chosen) for chosen in handle.trace.samples[0].selected]
    prompt_length = inputs["input_ids"].shape[1]
    extended = dict(inputs, input_ids=ids[:, :-1], attention_mask=torch.ones_like(ids[:, :-1]))
    if "mm_token_type_ids" in inputs:
        pad = torch.zeros(1, ids.shape[1] - 1 - prompt_length, dtype=torch.long)
        extended["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], pad], dim=1)
    captured, embeds, length, visual = _prompt(model, extended)
    visual[prompt_length - 1 :] = [False] * (length - prompt_length + 1)  # the query and generated text
    text_model = model.model.language_model
    hidden, _ = reference_forward(
        text_model, rotary_positions(captured, 0, length, 0), embeds, visual, config, decisions=decisions,
        injections=sample_injections(captured, 0, 0, length),
    )  # fmt: skip
    predicted = model.lm_head(hidden).argmax(-1)
    assert torch.equal(predicted[prompt_length - 1 :], ids[0, prompt_length:])


@torch.no_grad()
def assert_keep_all_is_stock(family, model, config: RoutingConfig) -> None:
    """Keep ratio 1.0 at every decision: the stock model's logits, bit for bit."""
    inputs = mixed_batch(family, "left")
    stock = model(**inputs).logits
    out, _ = routed(model, config, inputs)
    torch.testing.assert_close(out.logits, stock, atol=0, rtol=0)
