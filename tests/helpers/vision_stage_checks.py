"""Invariants of a pre-LLM vision stage and its presets through `reroute.apply` (docs/semantics.md §22).

Each check takes a model, a routing config and the stage's images computed independently of the
engine (``images(model, inputs) -> [StageImage]``, e.g. from the official code's functions) and
compares the routed model with the full-length reference (tests/helpers/reference.py): the kept
tokens written at their prompt positions (`place_stage1`), the dropped ones in no layer, every
other token at its original position, decisions by docs/semantics.md §2's rule.
"""

from __future__ import annotations

import torch
from tests.helpers.harness import decoder_inputs, rotary_positions, routed
from tests.helpers.nuwa_place import place_stage1
from tests.helpers.reference import reference_forward

import reroute
from reroute.backbones import backbone_for

ATOL = 2e-5


@torch.no_grad()
def reference_stage(model, inputs: dict, images) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The stock decoder inputs, the embeddings with the stage's tokens written in, and which positions stay."""
    captured = decoder_inputs(model, inputs)
    image_mask = inputs["input_ids"] == model.config.image_token_id
    embeds, present = place_stage1(captured["inputs_embeds"], image_mask, images(model, inputs))
    return captured, embeds, present


@torch.no_grad()
def reference_per_sample(model, inputs: dict, config, images, **scoring) -> list:
    """Per sample: its real positions that entered the decoder, the reference logits there, its decisions.

    ``scoring``: how the reference scores (`tests.helpers.reference.reference_forward`'s ``score_*``
    arguments; the default is docs/semantics.md §2's rule at the decision layer)."""
    captured, embeds, present = reference_stage(model, inputs, images)
    visual = backbone_for(model).visual_mask(model.config, inputs["input_ids"])
    text_model = model.model.language_model
    mask = inputs["attention_mask"].bool()
    out = []
    for b in range(embeds.shape[0]):
        real = torch.nonzero(mask[b]).flatten()
        offset, length = int(real[0]), len(real)
        pos = rotary_positions(captured, b, length, offset)
        hidden, decisions = reference_forward(
            text_model, pos, embeds[b, real], visual[b, real].tolist(), config, present=present[b, real].tolist(),
            **scoring,
        )
        out.append((real[present[b, real]], model.lm_head(hidden)[present[b, real]], decisions))
    return out


def check_equals_reference(model, config, inputs: dict, images) -> None:
    """Prefill logits at every position that entered the decoder, and the decisions, equal the reference's."""
    out, trace = routed(model, config, inputs)
    assert not bool(out.logits.isnan().any())
    mask = inputs["attention_mask"].bool()
    for b, (kept, logits, decisions) in enumerate(reference_per_sample(model, inputs, config, images)):
        torch.testing.assert_close(out.logits[b, kept], logits, atol=ATOL, rtol=0)
        offset = int(torch.nonzero(mask[b]).flatten()[0])
        shifted = [tuple(offset + j for j in chosen) for chosen in decisions]
        assert list(trace[b].selected) == (shifted if trace[b].routed else [()] * config.num_decisions)


def check_batch_equals_alone(model, config, prompts: list, make_batch, new: int = 5) -> None:
    """A padded batch (right-padded forward, left-padded generate) equals each sample alone."""
    inputs = make_batch(prompts, "right")
    out, _ = routed(model, config, inputs)
    mask = inputs["attention_mask"].bool()
    with reroute.apply(model, config), torch.no_grad():
        batch_ids = model.generate(**make_batch(prompts, "left"), max_new_tokens=new, do_sample=False)
        for b, prompt in enumerate(prompts):
            alone_inputs = make_batch([prompt], "left")
            alone = model(**alone_inputs)
            real = torch.nonzero(mask[b]).flatten()
            torch.testing.assert_close(out.logits[b, real], alone.logits[0], atol=ATOL, rtol=0)
            alone_ids = model.generate(**alone_inputs, max_new_tokens=new, do_sample=False)
            assert torch.equal(batch_ids[b, -new:], alone_ids[0, -new:])


@torch.no_grad()
def check_generate_equals_reference(model, config, inputs: dict, images, new: int = 6) -> None:
    """Greedy generate() (one sample) == the reference over prompt + generated tokens with the prefill's decisions."""
    # the tiny random models may pick their image / video markers: suppressed, so generated tokens are text
    specials = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    suppressed = sorted({getattr(model.config, name) for name in specials if getattr(model.config, name, None) is not None})
    with reroute.apply(model, config):
        ids = model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False, suppress_tokens=suppressed)
    prompt_length = inputs["input_ids"].shape[1]
    _, embeds, present = reference_stage(model, inputs, images)
    visual = backbone_for(model).visual_mask(model.config, ids[:, :-1])[0].tolist()
    ((_, _, decisions),) = reference_per_sample(model, inputs, config, images)
    extended = dict(inputs, input_ids=ids[:, :-1], attention_mask=torch.ones_like(ids[:, :-1]))
    if "mm_token_type_ids" in inputs:
        pad = torch.zeros(1, new - 1, dtype=torch.long)
        extended["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], pad], dim=1)
    captured = decoder_inputs(model, extended)
    full = captured["inputs_embeds"][0].clone()
    full[:prompt_length] = embeds[0]
    hidden, _ = reference_forward(
        model.model.language_model, rotary_positions(captured, 0, ids.shape[1] - 1, 0), full, visual, config,
        decisions=decisions, present=present[0].tolist(),
    )
    logits = model.lm_head(hidden)
    logits[:, model.generation_config.eos_token_id] = float("-inf")  # min_new_tokens = new: generate() never ends early
    logits[:, suppressed] = float("-inf")
    predicted = logits.argmax(-1)
    assert torch.equal(predicted[prompt_length - 1 :], ids[0, prompt_length:])


@torch.no_grad()
def check_keep_all_is_stock(model, config, inputs: dict) -> None:
    """A stage that keeps every token (keep fraction 1.0, no decision that drops) gives the stock logits."""
    stock = model(**inputs).logits
    out, _ = routed(model, config, inputs)
    mask = inputs["attention_mask"].bool()
    torch.testing.assert_close(out.logits[mask], stock[mask], atol=ATOL, rtol=0)
