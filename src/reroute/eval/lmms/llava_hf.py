"""``reroute_llava_hf``: lmms-eval's ``llava_hf`` classes (chat and simple), routed."""

from __future__ import annotations

import os
from typing import Any

from lmms_eval.models.chat.llava_hf import LlavaHf as _LlavaHfChat
from lmms_eval.models.simple.llava_hf import LlavaHf as _LlavaHfSimple

from reroute.eval.lmms.models import RoutedMixin


class _LlavaHfKwargs:
    """Put before `RoutedMixin`: its `_prepare_kwargs` replaces the mixin's no-op."""

    family = "llava"

    def _prepare_kwargs(self, kwargs: dict[str, Any]) -> None:
        # lmms-eval 0.7.3 passes device_map="" (its default) to from_pretrained in a single
        # process, which transformers 5 refuses; a single process loads onto `device` instead.
        if kwargs.get("device_map", "") == "" and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            kwargs["device_map"] = str(kwargs.get("device") or "cuda")


class RerouteLlavaHf(_LlavaHfKwargs, RoutedMixin, _LlavaHfChat):
    """``reroute_llava_hf`` (chat): lmms-eval's ``llava_hf`` chat model, routed."""


class RerouteLlavaHfSimple(_LlavaHfKwargs, RoutedMixin, _LlavaHfSimple):
    """``reroute_llava_hf`` (simple, ``--force_simple``): lmms-eval's ``llava_hf`` simple model, routed."""
