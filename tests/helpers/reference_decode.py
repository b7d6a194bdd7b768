"""The slow reference of a routed generate(): decisions taken on the prompt alone (docs/semantics.md §5),
then the whole sequence (prompt and generated tokens, which are text) re-run with those decisions."""

from __future__ import annotations

import torch
from tests.helpers.harness import decoder_inputs, sample_injections, visual_mask
from tests.helpers.reference import reference_forward


def rope_positions(captured: dict, length: int) -> torch.Tensor:
    """The rotary positions the decoder got (the last three rows of M-RoPE), or 0..length-1."""
    pos = captured.get("position_ids")
    if pos is None:
        return torch.arange(length)[None]
    return pos[-3:] if pos.ndim == 3 else pos


@torch.no_grad()
def reference_logits_for(model, config, inputs, ids):
    """Reference logits at every position of ``ids[:, :-1]`` (one unpadded sample), with the
    decisions the reference takes on the prompt alone; tokens after the prompt are text."""
    prompt_length = inputs["input_ids"].shape[1]
    extended = dict(inputs, input_ids=ids[:, :-1], attention_mask=torch.ones_like(ids[:, :-1]))
    if "mm_token_type_ids" in inputs:
        pad = torch.zeros(1, ids.shape[1] - 1 - prompt_length, dtype=torch.long)
        extended["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], pad], dim=1)
    visual = visual_mask(model, extended)[0].tolist()
    visual[prompt_length - 1] = False  # the query token is never a candidate (docs/semantics.md)
    visual[prompt_length:] = [False] * (len(visual) - prompt_length)
    text_model = model.model.language_model
    prompt = decoder_inputs(model, inputs)
    _, decisions = reference_forward(
        text_model, rope_positions(prompt, prompt_length), prompt["inputs_embeds"][0], visual[:prompt_length], config,
        injections=sample_injections(prompt, 0, 0, prompt_length),
    )
    whole = decoder_inputs(model, extended)
    hidden, _ = reference_forward(
        text_model, rope_positions(whole, ids.shape[1] - 1), whole["inputs_embeds"][0], visual, config, decisions=decisions,
        injections=sample_injections(whole, 0, 0, ids.shape[1] - 1),
    )
    return model.lm_head(hidden)


def assert_reference_predicts(model, config, inputs, ids, given: range = range(0)):
    """Greedy tokens after the prompt (but the positions in ``given``, text the user added) are the
    reference's argmax at every step."""
    prompt_length = inputs["input_ids"].shape[1]
    predicted = reference_logits_for(model, config, inputs, ids).argmax(-1)
    generated = [i for i in range(prompt_length, ids.shape[1]) if i not in given]
    assert predicted[[i - 1 for i in generated]].tolist() == ids[0, generated].tolist()
