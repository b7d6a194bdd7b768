"""pytest plugin: route every stock VLM that transformers' own model tests build (issue 16, item 10).

Load with ``-p routed_plugin`` (this folder on PYTHONPATH). With REROUTE_ROUTE_STOCK_TESTS=1,
each LlavaForConditionalGeneration / Qwen2_5_VLForConditionalGeneration /
Qwen2VLForConditionalGeneration is routed right after its ``__init__`` with a decision at layer 1
keeping every visual token, so the test then exercises the routed path on the same weights. With
the variable unset the plugin does nothing, which gives the stock run of the same command.
A decoder with a single layer has no valid decision layer; reroute refuses it at `apply` (the three
testers have 2 decoder layers, and no test of their files builds fewer).
"""

from __future__ import annotations

import functools
import os

import pytest

ENV_VAR = "REROUTE_ROUTE_STOCK_TESTS"
ROUTED_CLASSES = (
    "LlavaForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration",
    "Qwen2VLForConditionalGeneration",
)


KEEP_ALL = ("reroute", (1,), (1.0,))  # RoutingConfig arguments: decide at layer 1, keep every token


def _route_after_init(init):
    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):
        init(self, *args, **kwargs)
        # Only the exact class: a subclass's __init__ would route before its own attributes exist.
        if type(self).__name__ in ROUTED_CLASSES:
            import reroute

            config = reroute.RoutingConfig(*KEEP_ALL)
            # The handle must outlive this call; the model keeps it (not a Module, so no state_dict entry).
            self.__dict__["_reroute_stock_test_handle"] = reroute.apply(self, config)

    wrapped.__reroute_stock_test_wrapper__ = True
    return wrapped


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(ENV_VAR) != "1":
        return
    import transformers

    patched = []
    for name in ROUTED_CLASSES:
        cls = getattr(transformers, name)
        original = cls.__init__
        cls.__init__ = _route_after_init(original)
        patched.append((cls, original))
    config._reroute_stock_test_patches = patched  # undone at pytest_unconfigure


def pytest_unconfigure(config: pytest.Config) -> None:
    for cls, original in getattr(config, "_reroute_stock_test_patches", ()):
        cls.__init__ = original


def pytest_report_header(config: pytest.Config) -> str:
    routed = os.environ.get(ENV_VAR) == "1"
    return f"reroute stock-test plugin: {'ROUTED (keep ratio 1.0)' if routed else 'stock (not routed)'}"
