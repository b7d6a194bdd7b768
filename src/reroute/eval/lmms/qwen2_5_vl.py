"""``reroute_qwen2_5_vl``: lmms-eval's ``qwen2_5_vl`` classes (chat and simple), routed."""

from __future__ import annotations

from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL as _Qwen2_5_VLChat
from lmms_eval.models.simple.qwen2_5_vl import Qwen2_5_VL as _Qwen2_5_VLSimple

from reroute.eval.lmms.models import RoutedMixin


class RerouteQwen2_5_VL(RoutedMixin, _Qwen2_5_VLChat):  # noqa: N801 - lmms-eval's class name
    """``reroute_qwen2_5_vl`` (chat): lmms-eval's ``qwen2_5_vl`` chat model, routed."""

    family = "qwen2_5_vl"


class RerouteQwen2_5_VLSimple(RoutedMixin, _Qwen2_5_VLSimple):  # noqa: N801
    """``reroute_qwen2_5_vl`` (simple, ``--force_simple``): lmms-eval's ``qwen2_5_vl`` simple model, routed."""

    family = "qwen2_5_vl"
