"""lmms-eval model plugin: ``--model reroute_llava_hf`` / ``reroute_qwen2_5_vl`` with the routing in ``--model_args``.

lmms-eval is an optional extra (``pip install reroute[lmms]``); importing this package does
not import it. lmms-eval calls `manifests` through the ``lmms_eval.models`` entry point
(pyproject.toml) and imports `reroute.eval.lmms.llava_hf` or `.qwen2_5_vl` only when one of
these models is asked for. See docs/lmms-eval.md.
"""

from __future__ import annotations

from reroute.eval.lmms.args import ROUTING_KEYS, RoutingArgs

#: model id -> (chat class, simple class), as import paths
MODEL_CLASSES: dict[str, tuple[str, str]] = {
    "reroute_llava_hf": (
        "reroute.eval.lmms.llava_hf.RerouteLlavaHf",
        "reroute.eval.lmms.llava_hf.RerouteLlavaHfSimple",
    ),
    "reroute_qwen2_5_vl": (
        "reroute.eval.lmms.qwen2_5_vl.RerouteQwen2_5_VL",
        "reroute.eval.lmms.qwen2_5_vl.RerouteQwen2_5_VLSimple",
    ),
}


def manifests() -> list:
    """lmms-eval's ``lmms_eval.models`` entry point: one `ModelManifest` per routed model family."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(model_id=name, chat_class_path=chat, simple_class_path=simple)
        for name, (chat, simple) in MODEL_CLASSES.items()
    ]


__all__ = ["MODEL_CLASSES", "ROUTING_KEYS", "RoutingArgs", "manifests"]
