"""lmms-eval model plugin: ``--model reroute_<lmms-eval model>`` with the routing in ``--model_args``.

One routed class for every lmms-eval model class that loads a transformers class we route:
``llava_hf`` (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision), ``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl``,
``internvl_hf`` (InternVL ``-hf`` checkpoints) and ``mistral3_vl``; each keeps lmms-eval's name
after ``reroute_`` and its chat and/or simple class, as lmms-eval has them.

lmms-eval is an optional extra (``pip install reroute[lmms]``); importing this package does
not import it. lmms-eval calls `manifests` through the ``lmms_eval.models`` entry point
(pyproject.toml) and imports one family's module (`reroute.eval.lmms.llava_hf`, ...) only when
one of its models is asked for. See docs/lmms-eval.md.
"""

from __future__ import annotations

from reroute.eval.lmms.args import ROUTING_KEYS, RoutingArgs

#: model id -> (chat class, simple class), as import paths; None where lmms-eval has no such class
MODEL_CLASSES: dict[str, tuple[str | None, str | None]] = {
    "reroute_llava_hf": (
        "reroute.eval.lmms.llava_hf.RerouteLlavaHf",
        "reroute.eval.lmms.llava_hf.RerouteLlavaHfSimple",
    ),
    "reroute_qwen2_5_vl": (
        "reroute.eval.lmms.qwen2_5_vl.RerouteQwen2_5_VL",
        "reroute.eval.lmms.qwen2_5_vl.RerouteQwen2_5_VLSimple",
    ),
    "reroute_qwen2_vl": (None, "reroute.eval.lmms.qwen2_vl.RerouteQwen2_VLSimple"),
    "reroute_qwen3_vl": (
        "reroute.eval.lmms.qwen3_vl.RerouteQwen3_VL",
        "reroute.eval.lmms.qwen3_vl.RerouteQwen3_VLSimple",
    ),
    "reroute_internvl_hf": ("reroute.eval.lmms.internvl_hf.RerouteInternVLHf", None),
    "reroute_mistral3_vl": (None, "reroute.eval.lmms.mistral3_vl.RerouteMistral3_VLSimple"),
}


def manifests() -> list:
    """lmms-eval's ``lmms_eval.models`` entry point: one `ModelManifest` per routed model family."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(model_id=name, chat_class_path=chat, simple_class_path=simple)
        for name, (chat, simple) in MODEL_CLASSES.items()
    ]


__all__ = ["MODEL_CLASSES", "ROUTING_KEYS", "RoutingArgs", "manifests"]
