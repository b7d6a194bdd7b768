"""``reroute_mistral3_vl``: lmms-eval's ``mistral3_vl`` class (simple only), routed.

Mistral 3 declares no evaluation protocol (docs/semantics.md §9), so no pixel bounds are set:
lmms-eval's class keeps its own processor settings and refuses ``min_pixels=`` / ``max_pixels=``.
"""

from __future__ import annotations

from lmms_eval.models.simple.mistral3_vl import Mistral3_VL as _Mistral3_VLSimple

from reroute.eval.lmms.models import RoutedMixin


class RerouteMistral3_VLSimple(RoutedMixin, _Mistral3_VLSimple):  # noqa: N801 - lmms-eval's class name
    """``reroute_mistral3_vl``: lmms-eval's ``mistral3_vl`` model, routed."""

    family = None
