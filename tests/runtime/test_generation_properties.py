"""Property test: generate() driven through random modes is either exact or one of the documented errors.

Each example draws a family, a schedule, a batch and a mode (cache on/off, greedy or seeded
sampling, beams, assisted or prompt-lookup decoding, continuing a returned cache with more
text, a refused cache or prefill mode) and checks the outcome:

- every step's raw logits equal the slow reference's, teacher-forced on each sample alone
  with the decisions it takes on that sample's prompt (so the tokens are the reference's);
- beams and seeded sampling give the same sequences with and without a cache;
- a refused mode raises exactly its documented one-line error and changes nothing.
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.helpers.models import FAMILIES
from tests.helpers.reference_decode import reference_logits_for
from tests.runtime.test_generation_modes import REFUSALS

import reroute
from reroute import RoutingConfig
from reroute.backbones import backbone_for
from reroute.runtime.compat import CACHE_KEYWORD

MODELS = {name: family.make_model() for name, family in FAMILIES.items()}
ASSISTANTS = {name: family.make_model(seed=1) for name, family in FAMILIES.items()}
MODES = ["greedy", "greedy_no_cache", "sample", "sample_no_cache", "beams", "assisted", "prompt_lookup", "continuation"]
SINGLE_SAMPLE = {"assisted", "prompt_lookup", "continuation"}  # transformers runs these on one sample


@st.composite
def scenarios(draw):
    family = draw(st.sampled_from(sorted(FAMILIES)))
    action = draw(st.sampled_from(["remove", "reroute"]))
    layers = tuple(sorted(draw(st.sets(st.integers(1, 5), min_size=1, max_size=3))))
    ratios = [draw(st.floats(0.05, 1.0)) for _ in layers]
    if action == "remove":
        ratios = sorted(ratios, reverse=True)
    config = RoutingConfig(action, layers, tuple(ratios))
    mode = draw(st.sampled_from(MODES + list(REFUSALS)))
    batch = 1 if mode in SINGLE_SAMPLE else draw(st.integers(1, 3))
    prompts = [
        FAMILIES[family].make_prompt(
            draw(st.integers(0 if b else 1, 2)), size=draw(st.integers(0, 1)), seed=draw(st.integers(0, 10**6)),
            text_before=draw(st.integers(1, 6)),
        )
        for b in range(batch)
    ]
    return family, config, prompts, mode, draw(st.integers(0, 2**31 - 1))


def _options(model, new_tokens):
    # min_new_tokens keeps EOS away; generated visual token ids would be re-read as image slots without a cache
    return dict(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, return_dict_in_generate=True, output_logits=True,
        suppress_tokens=list(backbone_for(model).visual_token_ids(model.config)), pad_token_id=0,
    )  # fmt: skip


def _assert_logits_match_reference(model, config, family, prompts, inputs, out, given_text=None):
    """Step t's raw logits of sample b == the reference's at that sample's position P_b + t - 1."""
    steps = torch.stack(out.logits, dim=1)  # (B, T, V)
    start = out.sequences.shape[1] - steps.shape[1]
    for b, prompt in enumerate(prompts):
        alone = FAMILIES[family].make_batch([prompt])
        generated = out.sequences[b, start:]
        before = given_text if given_text is not None else out.sequences[b, inputs["input_ids"].shape[1] : start]
        ids = torch.cat([torch.tensor(prompt.ids), before, generated])[None]
        reference = reference_logits_for(model, config, alone, ids)
        torch.testing.assert_close(steps[b], reference[-steps.shape[1] :], atol=5e-5, rtol=0)


@settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(scenarios())
def test_generate_modes_are_exact_or_refused(scenario):
    family, config, prompts, mode, seed = scenario
    model = MODELS[family]
    inputs = FAMILIES[family].make_batch(prompts, "left")
    options = _options(model, new_tokens=5)
    with reroute.apply(model, config) as handle, torch.no_grad():
        if mode in REFUSALS:
            kwargs, message = REFUSALS[mode]
            with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
                model.generate(**inputs, **kwargs, **options)
            assert handle.trace is None  # refused before anything ran
            return
        if mode.startswith("greedy"):
            out = model.generate(**inputs, do_sample=False, use_cache=mode == "greedy", **options)
        elif mode.startswith("sample"):
            torch.manual_seed(seed)
            out = model.generate(**inputs, do_sample=True, top_k=0, use_cache=mode == "sample", **options)
            torch.manual_seed(seed)
            other = model.generate(**inputs, do_sample=True, top_k=0, use_cache=mode != "sample", **options)
            assert torch.equal(out.sequences, other.sequences)
        elif mode == "beams":
            beam = dict(options, num_beams=2, output_logits=False)
            out = model.generate(**inputs, do_sample=False, **beam)
            uncached = model.generate(**inputs, do_sample=False, use_cache=False, **beam)
            if not torch.equal(out.sequences, uncached.sequences):
                # transformers 4.57's own beam search differs with and without a cache on some inputs
                # (5.x's does not): the routed model may differ only where the stock model does
                handle.restore()
                stock = [model.generate(**inputs, do_sample=False, use_cache=c, **beam).sequences for c in (True, False)]
                assert not torch.equal(*stock), "routed beam search differs with and without a cache; stock does not"
            return
        elif mode == "assisted":
            out = model.generate(**inputs, do_sample=False, assistant_model=ASSISTANTS[family], **options)
        elif mode == "prompt_lookup":
            out = model.generate(**inputs, do_sample=False, prompt_lookup_num_tokens=2, **options)
        else:  # continuation: a second turn of text on the returned cache
            first = model.generate(**inputs, do_sample=False, **options)
            added = torch.tensor([7, 8, 9])
            more = torch.cat([first.sequences, added[None]], dim=1)
            follow_up = {"input_ids": more, "attention_mask": torch.ones_like(more)}
            if "mm_token_type_ids" in inputs:
                extra = torch.zeros(1, more.shape[1] - inputs["input_ids"].shape[1], dtype=torch.long)
                follow_up["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], extra], dim=1)
            out = model.generate(**follow_up, do_sample=False, **{CACHE_KEYWORD: first.past_key_values}, **options)
            given_text = torch.cat([first.sequences[0, inputs["input_ids"].shape[1] :], added])
            _assert_logits_match_reference(model, config, family, prompts, inputs, out, given_text)
            return
    _assert_logits_match_reference(model, config, family, prompts, inputs, out)
