"""``reroute_qwen2_vl``: lmms-eval's ``qwen2_vl`` class (simple only: lmms-eval has no chat class for it), routed."""

from __future__ import annotations

from lmms_eval.models.simple.qwen2_vl import Qwen2_VL as _Qwen2_VLSimple

from reroute.eval.lmms.models import RoutedMixin


class RerouteQwen2_VLSimple(RoutedMixin, _Qwen2_VLSimple):  # noqa: N801 - lmms-eval's class name
    """``reroute_qwen2_vl``: lmms-eval's ``qwen2_vl`` model, routed."""

    family = "qwen2_vl"
