"""The lmms-eval plugin's classes for every family lmms-eval has: registration and ``--model_args``.

For each lmms-eval model class that loads a transformers class we route (llava_hf, qwen2_vl,
qwen2_5_vl, qwen3_vl, internvl_hf, mistral3_vl), ``reroute_<name>`` resolves through lmms-eval's
own registry to our subclass of that class, chat and simple as lmms-eval has them. The newer
families' processors need torchvision, absent here, so no model is loaded: the parent's
``__init__`` is replaced by a recorder, which shows what reaches it (the routing keys taken out,
the family's pixel bounds filled in). lmms-eval's ``llava_onevision`` (LLaVA-NeXT's own code) and
``internvl2`` / ``internvl3`` (InternVL's remote code) load no class we route and have no routed twin.
"""

from __future__ import annotations

import importlib

import pytest

#: our model id -> (lmms-eval's model id, chat class path, simple class path), None where lmms-eval has none
FAMILIES = {
    "reroute_llava_hf": ("llava_hf", "reroute.eval.lmms.llava_hf.RerouteLlavaHf",
                         "reroute.eval.lmms.llava_hf.RerouteLlavaHfSimple"),
    "reroute_qwen2_vl": ("qwen2_vl", None, "reroute.eval.lmms.qwen2_vl.RerouteQwen2_VLSimple"),
    "reroute_qwen2_5_vl": ("qwen2_5_vl", "reroute.eval.lmms.qwen2_5_vl.RerouteQwen2_5_VL",
                           "reroute.eval.lmms.qwen2_5_vl.RerouteQwen2_5_VLSimple"),
    "reroute_qwen3_vl": ("qwen3_vl", "reroute.eval.lmms.qwen3_vl.RerouteQwen3_VL",
                         "reroute.eval.lmms.qwen3_vl.RerouteQwen3_VLSimple"),
    "reroute_internvl_hf": ("internvl_hf", "reroute.eval.lmms.internvl_hf.RerouteInternVLHf", None),
    "reroute_mistral3_vl": ("mistral3_vl", None, "reroute.eval.lmms.mistral3_vl.RerouteMistral3_VLSimple"),
}


def _load(path: str):
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _classes():
    for ours, (theirs, chat, simple) in FAMILIES.items():
        for kind, path in (("chat", chat), ("simple", simple)):
            if path is not None:
                yield pytest.param(ours, theirs, kind, path, id=f"{ours}-{kind}")


def test_the_plugin_lists_exactly_these_classes():
    from reroute.eval.lmms import MODEL_CLASSES

    assert MODEL_CLASSES == {ours: (chat, simple) for ours, (_, chat, simple) in FAMILIES.items()}


@pytest.mark.parametrize(("ours", "theirs", "kind", "path"), list(_classes()))
def test_each_routed_class_is_lmms_evals_class_of_the_family(ours, theirs, kind, path):
    from lmms_eval.models import get_model

    cls = _load(path)
    has_chat = FAMILIES[ours][1] is not None
    # lmms-eval resolves a name to its chat class unless told --force_simple (or it has none)
    assert get_model(ours, force_simple=kind == "simple") is cls
    if kind == "chat" or not has_chat:
        assert get_model(ours) is cls
    parent = get_model(theirs, force_simple=kind == "simple")
    assert cls.__mro__[-len(parent.__mro__):] == parent.__mro__  # lmms-eval's class, under ours
    from reroute.eval.lmms.models import RoutedMixin

    assert cls.__mro__.index(RoutedMixin) < cls.__mro__.index(parent)


class Recorded(Exception):
    """Raised by the recorder in place of the parent's model load."""


@pytest.fixture
def recorder(monkeypatch):
    """Replaces each lmms-eval parent's ``__init__``: records the keyword arguments it would get."""
    seen: list[dict] = []

    def record(self, *args, **kwargs):
        seen.append(kwargs)
        raise Recorded

    def install(cls):
        from reroute.eval.lmms.models import RoutedMixin

        parent = cls.__mro__[cls.__mro__.index(RoutedMixin) + 1]
        monkeypatch.setattr(parent, "__init__", record)
        return seen

    return install


#: the pixel arguments each family's class gets when none are given (the family's protocol's bounds)
PAPER_BOUNDS = {"min_pixels": 200704, "max_pixels": 451584}
DEFAULT_PIXELS = {
    "reroute_llava_hf": {}, "reroute_qwen2_vl": PAPER_BOUNDS, "reroute_qwen2_5_vl": PAPER_BOUNDS,
    # Qwen3-VL: the paper's 256..576 tokens at its 32-px tokens (docs/semantics.md §9)
    "reroute_qwen3_vl": {"min_pixels": 262144, "max_pixels": 589824}, "reroute_internvl_hf": {},
    "reroute_mistral3_vl": {},
}


@pytest.mark.parametrize(("ours", "theirs", "kind", "path"), list(_classes()))
def test_model_args_reach_lmms_evals_class_without_the_routing_keys(ours, theirs, kind, path, recorder):
    from lmms_eval.utils import simple_parse_args_string

    cls = _load(path)
    seen = recorder(cls)
    kwargs = simple_parse_args_string("pretrained=x,device=cpu,preset=reroute_vs_fastv,tier=128")
    with pytest.raises(Recorded):
        cls(**kwargs)
    assert seen == [{"pretrained": "x", "device": "cpu", **DEFAULT_PIXELS[ours]}
                    | ({"device_map": "cpu"} if ours == "reroute_llava_hf" else {})]


@pytest.mark.parametrize(("ours", "theirs", "kind", "path"), list(_classes()))
def test_bad_routing_args_fail_before_the_model_loads(ours, theirs, kind, path, recorder):
    cls = _load(path)
    seen = recorder(cls)
    message = r"^preset=fastv needs tier=: the budget avg_T, e\.g\. tier=128 \(of 576 visual tokens\)$"
    with pytest.raises(ValueError, match=message):
        cls(pretrained="x", preset="fastv")
    assert seen == []


def test_pixel_args_per_family(recorder):
    from reroute.eval.lmms.internvl_hf import RerouteInternVLHf
    from reroute.eval.lmms.qwen2_vl import RerouteQwen2_VLSimple

    seen = recorder(RerouteQwen2_VLSimple)
    with pytest.raises(Recorded):
        RerouteQwen2_VLSimple(pretrained="x", max_pixels=1003520)
    assert seen == [{"pretrained": "x", "min_pixels": 200704, "max_pixels": 1003520}]
    recorder(RerouteInternVLHf)
    with pytest.raises(ValueError, match=r"^min_pixels does not apply to the internvl family: its protocol declares "
                                         r"no pixel bounds for its processor; drop min_pixels$"):
        RerouteInternVLHf(pretrained="x", min_pixels=200704)
