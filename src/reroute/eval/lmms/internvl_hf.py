"""``reroute_internvl_hf``: lmms-eval's ``internvl_hf`` class (chat only: lmms-eval has no simple class for
it; its ``internvl2`` / ``internvl3`` classes load InternVL's remote code, not the transformers class we route),
routed."""

from __future__ import annotations

from lmms_eval.models.chat.internvl_hf import InternVLHf as _InternVLHfChat

from reroute.eval.lmms.models import RoutedMixin


class RerouteInternVLHf(RoutedMixin, _InternVLHfChat):
    """``reroute_internvl_hf``: lmms-eval's ``internvl_hf`` chat model, routed."""

    family = "internvl"
