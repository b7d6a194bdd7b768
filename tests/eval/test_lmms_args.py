"""The lmms-eval plugin's parts that need no lmms-eval: ``--model_args`` -> `RoutingConfig`, the routing
session (apply, counting prefills, the undo that ``clean()`` relies on), the demo's chat template and
the tiny demo task's scoring. The plugin itself runs end to end in tests_lmms/ (`make test-lmms`)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from tests.helpers.models import llava_batch, llava_prompt, tiny_llava

import reroute
from reroute.budgets import preset_names
from reroute import RoutingConfig
from reroute.budgets import preset_names
from reroute.demo import modeling, synthetic
from reroute.demo.evaluation import score_answer
from reroute.runtime.patching import Patch
from reroute.eval.lmms import ROUTING_KEYS, RoutingArgs
from reroute.demo import lmms_task as demo_task
from reroute.eval.lmms.session import RoutingSession

# ----------------------------------------------------------------------------- model_args -> RoutingConfig
# Values arrive as lmms-eval's parser leaves them: numbers as int/float, everything else a string
# (a bracketed list stays one string: lmms-eval does not split on commas inside brackets).


def test_no_routing_key_means_unrouted_and_leaves_the_rest():
    model_args = {"pretrained": "llava-hf/llava-1.5-7b-hf", "device": "cuda", "batch_size": 1}
    assert RoutingArgs.pop_from(model_args) is None
    assert model_args == {"pretrained": "llava-hf/llava-1.5-7b-hf", "device": "cuda", "batch_size": 1}


def test_pop_from_takes_only_the_routing_keys():
    model_args = {"pretrained": "p", "preset": "reroute_vs_fastv", "tier": 128, "ratios": "paper", "device_map": "auto"}
    args = RoutingArgs.pop_from(model_args)
    assert model_args == {"pretrained": "p", "device_map": "auto"}
    assert (args.preset, args.tier, args.ratios, args.num_visual) == ("reroute_vs_fastv", 128, "paper", 576)


@pytest.mark.parametrize("name", ["fastv", "pdrop", "reroute_vs_fastv", "reroute_vs_pdrop"])
@pytest.mark.parametrize("ratios", ["solved", "paper"])
def test_preset_resolves_to_the_library_preset_for_the_loaded_depth(name, ratios):
    model = tiny_llava(num_layers=12)
    args = RoutingArgs.from_values({"preset": name, "tier": 64, "ratios": ratios})
    assert args.resolve(model) == reroute.preset(name, tier=64, model=model, ratios=ratios)
    assert max(args.resolve(model).decision_layers) < 12  # scaled from the paper's 32 layers


def test_tier_counts_in_num_visual_tokens():
    args = RoutingArgs.from_values({"preset": "reroute_vs_pdrop", "tier": 32, "num_visual": 144})
    assert args.resolve(12) == reroute.preset("reroute_vs_pdrop", tier=32, num_layers=12, num_visual=144)
    # ratios are fractions: tier 32 of 144 is tier 128 of 576
    assert args.resolve(12).keep_ratios == pytest.approx(RoutingArgs.from_values({"preset": "reroute_vs_pdrop", "tier": 128}).resolve(12).keep_ratios)


def test_execution_overrides_the_preset():
    args = RoutingArgs.from_values({"preset": "reroute_vs_fastv", "tier": 128, "execution": "per_layer"})
    config = args.resolve(32)
    assert config.execution == "per_layer"
    assert config.keep_ratios == reroute.preset("reroute_vs_fastv", tier=128).keep_ratios


@pytest.mark.parametrize(
    "given, expected",
    [
        (
            {"action": "remove", "decision_layers": "[2,7,15,23]", "keep_ratios": "[0.5,0.25,0.125,0.0625]"},
            RoutingConfig("remove", (2, 7, 15, 23), (0.5, 0.25, 0.125, 0.0625)),
        ),
        ({"decision_layers": 3, "keep_ratios": 0.25}, RoutingConfig("reroute", (3,), (0.25,))),
        ({"decision_layers": "[3]", "keep_ratios": "[1]"}, RoutingConfig("reroute", (3,), (1.0,))),
        (
            {"decision_layers": [3, 8], "keep_ratios": (0.2, 0.3), "execution": "per_layer"},
            RoutingConfig("reroute", (3, 8), (0.2, 0.3), "per_layer"),
        ),
    ],
)
def test_fields_give_that_routing_config_whatever_the_depth(given, expected):
    args = RoutingArgs.from_values(given)
    assert args.resolve(None) == expected
    assert args.describe() == str(expected)


@pytest.mark.parametrize(
    "given, message",
    [
        ({"preset": "fastv"}, "preset=fastv needs tier=: the budget avg_T, e.g. tier=128 (of 576 visual tokens)"),
        ({"preset": "fastvv", "tier": 128}, "unknown preset 'fastvv': use one of " + ", ".join(preset_names())),
        ({"preset": "fastv", "tier": 128, "ratios": "exact"}, "ratios=exact is not a ratio source: use ratios=solved or ratios=paper"),
        (
            {"preset": "fastv", "tier": 100, "ratios": "paper"},
            "ratios='paper' has no published set for tier 100: the paper publishes tiers 192, 128, 64; use ratios='solved' for other tiers",
        ),
        ({"preset": "fastv", "tier": "high"}, "tier='high' is not a positive number: write e.g. tier=128"),
        ({"preset": "fastv", "tier": -64}, "tier=-64 is not a positive number: write e.g. tier=128"),
        ({"preset": "fastv", "tier": True}, "tier=True is not a positive number: write e.g. tier=128"),
        ({"preset": "fastv", "tier": 128, "num_visual": 0}, "num_visual=0 is not a positive integer: write e.g. num_visual=576"),
        ({"preset": "fastv", "tier": 128, "num_visual": 576.5}, "num_visual=576.5 is not a positive integer: write e.g. num_visual=576"),
        ({"preset": 3, "tier": 128}, "preset=3 is not a name: write e.g. preset=reroute_vs_fastv"),
        (
            {"preset": "fastv", "tier": 128, "keep_ratios": "[0.5]"},
            "preset= and keep_ratios= were both given: a preset fixes action, decision_layers and keep_ratios; "
            "drop keep_ratios= or drop preset=",
        ),
        (
            {"preset": "fastv", "tier": 128, "execution": "fast"},
            "execution must be one of ('stagewise', 'per_layer'), got 'fast'",
        ),
        ({"tier": 128}, "tier= needs preset=: give preset=<name>,tier=<avg_T>, or the RoutingConfig fields"),
        ({"ratios": "paper", "decision_layers": 3, "keep_ratios": 0.5}, "ratios= needs preset=: give preset=<name>,tier=<avg_T>, or the RoutingConfig fields"),
        (
            {"action": "remove"},
            "a routing needs preset=<name>,tier=<avg_T>, or both decision_layers= and keep_ratios=, e.g. decision_layers=[3],keep_ratios=[0.25]",
        ),
        (
            {"decision_layers": "[3,7]"},
            "a routing needs preset=<name>,tier=<avg_T>, or both decision_layers= and keep_ratios=, e.g. decision_layers=[3],keep_ratios=[0.25]",
        ),
        ({"decision_layers": "3/7", "keep_ratios": 0.5}, "decision_layers=3/7 is not a list: write e.g. decision_layers=[3,7,15,23]"),
        (
            {"decision_layers": "[3,7.5]", "keep_ratios": "[0.5,0.5]"},
            "decision_layers=[3,7.5] holds a value that is not an integer: write e.g. decision_layers=[3,7,15,23]",
        ),
        (
            {"decision_layers": "[3]", "keep_ratios": '["half"]'},
            'keep_ratios=["half"] holds a value that is not a number: write e.g. keep_ratios=[0.1418,0.1418,0.1418,0.1418]',
        ),
        (
            {"decision_layers": "[3,7]", "keep_ratios": "[0.5]"},
            "keep_ratios has 1 values but decision_layers has 2: give one ratio per decision layer",
        ),
        ({"decision_layers": 3, "keep_ratios": 0.5, "action": "drop"}, "action must be one of ('remove', 'reroute'), got 'drop'"),
        ({"keep_ratio": 0.5}, "keep_ratio= is not a routing argument: use " + ", ".join(ROUTING_KEYS)),
        (
            {"preset": "fastv", "tier": 64, "clip": "openai/clip-vit-large-patch14-336"},
            "clip= is read by the cdpruner presets (vision_stage='cdpruner') only; drop clip=",
        ),
    ],
)
def test_bad_routing_args_fail_with_one_line_naming_the_fix(given, message):
    with pytest.raises(ValueError) as error:
        RoutingArgs.from_values(given)
    assert str(error.value) == message


def test_clip_goes_with_a_cdpruner_preset():
    args = RoutingArgs.from_values({"preset": "cdpruner", "tier": 64, "clip": "openai/clip-vit-large-patch14-336"})
    assert args.clip == "openai/clip-vit-large-patch14-336"
    assert args.describe() == "preset=cdpruner, tier=64 of 576, ratios=solved, clip=openai/clip-vit-large-patch14-336"


def test_decision_layer_beyond_the_loaded_model_fails_at_apply():
    args = RoutingArgs.from_values({"decision_layers": 7, "keep_ratios": 0.5})
    model = tiny_llava(num_layers=6)
    with pytest.raises(ValueError, match=r"^decision layer 7 is outside the decoder: LlamaModel has 6 layers \(valid decision layers are 1\.\.5\)$"):
        RoutingSession(model, args.resolve(model))
    assert "forward" not in model.__dict__ and not model._forward_hooks


# ----------------------------------------------------------------------------- the routing session


def _inputs(seed: int) -> dict:
    return llava_batch([llava_prompt(1, seed=seed), llava_prompt(2, seed=seed + 1), llava_prompt(0, seed=seed + 2)])


def test_session_counts_every_prefill_and_no_decode_step():
    model = tiny_llava()
    config = RoutingConfig("reroute", (1, 3), (0.5, 0.25))
    session = RoutingSession(model, config)
    expected = []
    with torch.no_grad():
        for seed in (0, 10):
            model.generate(**_inputs(seed), max_new_tokens=4, do_sample=False)
            expected += list(session.handle.trace.samples)
    stats = session.take_stats()
    routed = [s for s in expected if s.routed]
    assert (stats.samples, stats.routed_samples) == (6, 4)
    assert stats.avg_T == pytest.approx(sum(s.avg_T for s in routed) / 4)
    assert stats.num_visual == pytest.approx((16 + 32 + 16 + 32) / 4)
    assert stats.as_metrics() == {
        "reroute_avg_T": stats.avg_T,
        "reroute_num_visual": stats.num_visual,
        "reroute_samples": 6,
        "reroute_routed_samples": 4,
    }
    # a new interval starts empty, and counts the next prefill alone
    assert session.take_stats().samples == 0
    with torch.no_grad():
        model(**_inputs(20))
    assert session.take_stats().samples == 3


def test_stop_restores_the_model_exactly_and_lets_go_of_it():
    model = tiny_llava()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = _inputs(0)
    with torch.no_grad():
        vanilla = model(**inputs).logits
    session = RoutingSession(model, RoutingConfig("reroute", (1,), (0.25,)))
    with torch.no_grad():
        assert not torch.allclose(model(**inputs).logits, vanilla)
    session.stop()
    session.stop()  # idempotent, as lmms-eval may clean twice
    assert not session.active
    assert "forward" not in model.__dict__ and not model._forward_hooks
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, vanilla)
    with pytest.raises(RuntimeError, match=r"^this routing session was stopped \(lmms-eval's clean\(\) ran\): the model is restored and released$"):
        session.handle
    # what lmms-eval's clean() relies on: once it drops its reference, nothing of ours keeps the model
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_a_running_session_keeps_the_model_routed():
    model = tiny_llava()
    session = RoutingSession(model, RoutingConfig("reroute", (1,), (0.25,)))
    assert session.active and Patch.installed(model, "generate") is not None
    with pytest.raises(ValueError, match=r"^this model is already routed; call handle.restore\(\) first$"):
        RoutingSession(model, RoutingConfig("reroute", (1,), (0.25,)))


# ----------------------------------------------------------------------------- the demo's chat template and task


@pytest.fixture(scope="module")
def demo_processor():
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(modeling.MODEL_DIR))


def test_demo_chat_template_reproduces_the_demo_prompt(demo_processor):
    for sample in demo_task.samples(16):
        # lmms-eval's chat classes: content parts; its simple classes: a string with <image> already in it
        parts = [{"role": "user", "content": [{"type": "image", "url": sample.image}, {"type": "text", "text": sample.question}]}]
        plain = [{"role": "user", "content": f"<image>\n{sample.question}"}]
        expected = modeling.format_prompt(sample.question)
        assert demo_processor.apply_chat_template(parts, tokenize=False, add_generation_prompt=True) == expected
        assert demo_processor.tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True) == expected


def test_demo_chat_template_writes_the_training_format_for_conversations(demo_processor):
    first, second = synthetic.make_conversation(0, "test", 0, turns=2)
    messages = [
        {"role": "system", "content": "ignored"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": first.question}]},
        {"role": "assistant", "content": first.answer},
        {"role": "user", "content": [{"type": "text", "text": second.question}]},
    ]
    text = demo_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        modeling.format_prompt(first.question) + modeling.format_answer(first.answer) + modeling.format_followup(second.question)
    )


def test_demo_task_scores_as_the_demo_does():
    samples = demo_task.samples(12)
    assert {s.kind for s in samples} == {"grounding", "vqa"}
    wrong_box = "[0.00, 0.00, 0.01, 0.01]"
    for i, s in enumerate(samples):
        doc = {k: v for k, v in demo_task.doc_of(s, i).items() if k != "image"}
        assert doc["index"] == i and doc["question"] == s.question
        for prediction in (s.answer, f" {s.answer} </s>", wrong_box, "no", "3"):
            expected = score_answer(s, prediction)["correct"]
            assert demo_task.process_results(doc, [prediction]) == {"accuracy": float(expected)}
        assert demo_task.process_results(doc, [s.answer]) == {"accuracy": 1.0}


def test_demo_task_docs_give_the_image_and_the_bare_question():
    sample = demo_task.samples(1)[0]
    doc = {"image": sample.image.convert("L"), "question": sample.question}
    (image,) = demo_task.doc_to_visual(doc)
    assert image.mode == "RGB" and image.size == sample.image.size
    assert demo_task.doc_to_text(doc) == sample.question


# ------------------------------------------------------------------------------ pixel bounds


def test_pixel_args_default_to_the_papers_and_are_refused_on_llava():
    from reroute.eval.lmms.args import set_pixel_args

    qwen = {"pretrained": "Qwen/Qwen2.5-VL-7B-Instruct"}
    set_pixel_args(qwen, "qwen2_5_vl")
    assert qwen == {"pretrained": "Qwen/Qwen2.5-VL-7B-Instruct", "min_pixels": 200704, "max_pixels": 451584}
    given = {"max_pixels": 16384, "min_pixels": 1024}
    set_pixel_args(given, "qwen2_5_vl")
    assert given == {"min_pixels": 1024, "max_pixels": 16384}
    llava = {"pretrained": "llava-hf/llava-1.5-7b-hf"}
    set_pixel_args(llava, "llava")
    assert llava == {"pretrained": "llava-hf/llava-1.5-7b-hf"}  # nothing added where the processor takes no bounds
    with pytest.raises(ValueError, match=r"^max_pixels does not apply to the llava family: its protocol declares no "
                       r"pixel bounds for its processor; drop max_pixels$"):
        set_pixel_args({"max_pixels": 451584}, "llava")
    with pytest.raises(ValueError, match=r"^min_pixels 500000 and max_pixels 451584: give 0 < min_pixels <= max_pixels$"):
        set_pixel_args({"min_pixels": 500000}, "qwen2_5_vl")
    with pytest.raises(ValueError, match=r"^max_pixels='big' is not a positive integer: write e\.g\. max_pixels=451584$"):
        set_pixel_args({"max_pixels": "big"}, "qwen2_5_vl")
