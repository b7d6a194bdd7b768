"""Models dispatched by accelerate run routed exactly (docs/semantics.md §18, docs/supported-modes.md).

`accelerate.dispatch_model` puts the hooks `from_pretrained(device_map=...)` puts: the decoder split
by layers (some offloaded to "disk"), the language model as one unit (on "cpu", or offloaded to
"disk"), the vision side and the language model as separate units. Each routed model must give the
same logits, trace and generate() as the same routed model without hooks, bit for bit, and come
back with its hooks after restore(). This machine has only "cpu" and "disk".
"""

from __future__ import annotations

import re

import pytest
import torch
from tests.helpers.batches import mixed_batch

import reroute
from reroute import RoutingConfig
from reroute.backbones import backbone_for

dispatch_model = pytest.importorskip("accelerate").dispatch_model
hooks = pytest.importorskip("accelerate.hooks")

CONFIG = RoutingConfig("reroute", (1, 3, 4), (0.3, 0.5, 0.2))
GREEDY = dict(do_sample=False, max_new_tokens=4, min_new_tokens=4)
MAPS = ("layers_on_disk", "lm_unit_cpu", "lm_unit_disk", "vision_disk_lm_cpu")


def _name_of(model, module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def device_map(model, kind: str) -> dict[str, str]:
    """A complete accelerate device map of ``kind`` for ``model``, built from its own module tree."""
    backbone = backbone_for(model)
    text, multimodal = backbone.text_model(model), backbone.multimodal_model(model)
    lm, mm = _name_of(model, text), _name_of(model, multimodal)
    beside_lm = [f"{mm}.{n}" for n, child in multimodal.named_children() if child is not text]
    outside = [n for n, child in model.named_children() if child is not multimodal]  # lm_head
    direct = [f"{mm}.{n}" for n, _ in multimodal.named_parameters(recurse=False)]  # LLaVA-NeXT's image_newline
    units = {name: "cpu" for name in beside_lm + outside + direct}
    if kind == "layers_on_disk":
        layers = backbone.layers(text)
        for n, child in text.named_children():
            if child is layers:
                units.update({f"{lm}.{n}.{i}": "disk" if i % 2 else "cpu" for i in range(len(layers))})
            else:
                units[f"{lm}.{n}"] = "cpu"
    elif kind == "lm_unit_cpu":
        units[lm] = "cpu"
    elif kind == "lm_unit_disk":
        units[lm] = "disk"
    elif kind == "vision_disk_lm_cpu":
        units.update({name: "disk" for name in beside_lm})
        units[lm] = "cpu"
    return units


def _routed(model, inputs):
    with reroute.apply(model, CONFIG) as handle, torch.no_grad():
        logits = model(**inputs).logits
        trace = handle.trace
        generated = model.generate(**inputs, **GREEDY)
    return logits, trace, generated


@pytest.fixture(scope="module")
def plain(family):
    """The routed model without hooks: logits, trace, generate() on a left-padded mixed batch."""
    inputs = mixed_batch(family)
    return inputs, _routed(family.make_model(), inputs)


@pytest.mark.filterwarnings("ignore:The following device_map keys do not match")  # a parameter's name, not a module's
@pytest.mark.parametrize("kind", MAPS)
def test_dispatched_model_routes_exactly(family, plain, kind, tmp_path):
    inputs, (logits, trace, generated) = plain
    model = family.make_model()
    # nn.MultiheadAttention (SigLIP's pooling head) reads its weights without calling submodules: accelerate
    # must load them up front to offload it at all, stock or routed
    dispatch_model(
        model, device_map(model, kind), offload_dir=str(tmp_path), force_hooks=True,
        preload_module_classes=["MultiheadAttention"],
    )
    text = backbone_for(model).text_model(model)
    assert (kind == "layers_on_disk") != hooks_on(text)  # the unit maps put accelerate's hook on the decoder
    with torch.no_grad():
        stock = model(**inputs).logits
    hooked_forward, old_forward = text.__dict__.get("forward"), text.__dict__.get("_old_forward")

    got_logits, got_trace, got_generated = _routed(model, inputs)

    assert torch.equal(got_logits, logits) and not torch.equal(got_logits, stock)
    assert got_trace == trace
    assert torch.equal(got_generated, generated)
    # restore() gives the hooks back as they were
    assert text.__dict__.get("forward") is hooked_forward and text.__dict__.get("_old_forward") is old_forward
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, stock)


def hooks_on(module) -> bool:
    return getattr(module, "_hf_hook", None) is not None


def test_hook_runs_around_the_routed_decoder(family):
    """accelerate's pre_forward / post_forward run once per decoder call, around the routed loop."""
    calls = []

    class Record(hooks.ModelHook):
        def pre_forward(self, module, *args, **kwargs):
            calls.append("pre")
            return args, kwargs

        def post_forward(self, module, output):
            calls.append("post")
            return output

    model = family.make_model()
    inputs = mixed_batch(family)
    expected, trace, _ = _routed(family.make_model(), inputs)
    text = backbone_for(model).text_model(model)
    hooks.add_hook_to_module(text, Record())
    with reroute.apply(model, CONFIG) as handle, torch.no_grad():
        assert torch.equal(model(**inputs).logits, expected) and handle.trace == trace
    assert calls == ["pre", "post"]


def test_a_wrapper_under_accelerates_hook_is_refused():
    """Another library's wrapper of the decoder's forward stays refused when accelerate hooked it afterwards."""
    from tests.helpers.models import tiny_llava

    model = tiny_llava()
    text = model.model.language_model
    inner = text.forward
    text.forward = lambda *a, **k: inner(*a, **k)
    hooks.add_hook_to_module(text, hooks.ModelHook())
    message = (
        "the forward of LlamaModel is already patched by another library; apply reroute before that library wraps it, "
        "or remove its wrapper first"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        reroute.apply(model, CONFIG)
    assert "generate" not in model.__dict__ and "forward" not in model.model.__dict__


def test_from_pretrained_with_the_language_model_on_disk_routes_exactly(tmp_path):
    """The issue's case: ``from_pretrained(device_map={..., "model.language_model": ...})`` puts accelerate's
    hook on the decoder (once refused: "the forward of LlamaModel is already patched by another library")."""
    from transformers import LlavaForConditionalGeneration

    from tests.helpers.models import llava_batch, llava_prompt, tiny_llava

    model = tiny_llava()
    model.save_pretrained(tmp_path / "model")
    inputs = llava_batch([llava_prompt(1), llava_prompt(2, seed=1)])
    logits, trace, generated = _routed(model, inputs)
    units = {"model.vision_tower": "cpu", "model.multi_modal_projector": "cpu", "model.language_model": "disk", "lm_head": "cpu"}
    loaded = LlavaForConditionalGeneration.from_pretrained(
        tmp_path / "model", device_map=units, offload_folder=str(tmp_path / "offload"), attn_implementation="sdpa"
    )
    assert hooks_on(loaded.model.language_model)
    got_logits, got_trace, got_generated = _routed(loaded, inputs)
    assert torch.equal(got_logits, logits) and got_trace == trace and torch.equal(got_generated, generated)


def test_decoder_layers_on_several_devices_are_refused():
    """Layers split across accelerators (several execution devices) are refused in one line, model untouched.
    This machine has one device; "meta" stands in for a second accelerator (the refusal comes before any run)."""
    from tests.helpers.models import tiny_llava

    model = tiny_llava()
    layers = model.model.language_model.layers
    for i, layer in enumerate(layers):
        hooks.add_hook_to_module(layer, hooks.AlignDevicesHook(execution_device="cpu" if i < 3 else "meta"))
    message = (
        "the decoder's layers run on several devices (cpu, meta) under accelerate's device map; reroute runs the "
        "decoder on one: place the language model on one device (device_map={..., 'model.language_model': 0}), "
        "offloading to 'cpu' / 'disk' as needed"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        reroute.apply(model, CONFIG)
    assert "generate" not in model.__dict__ and "forward" not in model.model.__dict__
