"""``reroute_qwen3_vl``: lmms-eval's ``qwen3_vl`` classes (chat and simple), routed."""

from __future__ import annotations

from lmms_eval.models.chat.qwen3_vl import Qwen3_VL as _Qwen3_VLChat
from lmms_eval.models.simple.qwen3_vl import Qwen3_VL as _Qwen3_VLSimple

from reroute.eval.lmms.models import RoutedMixin


class RerouteQwen3_VL(RoutedMixin, _Qwen3_VLChat):  # noqa: N801 - lmms-eval's class name
    """``reroute_qwen3_vl`` (chat): lmms-eval's ``qwen3_vl`` chat model, routed."""

    family = "qwen3_vl"


class RerouteQwen3_VLSimple(RoutedMixin, _Qwen3_VLSimple):  # noqa: N801
    """``reroute_qwen3_vl`` (simple, ``--force_simple``): lmms-eval's ``qwen3_vl`` simple model, routed."""

    family = "qwen3_vl"
