"""tools/stock_tests/routed_plugin.py: routes the stock VLMs transformers' model tests build, only when enabled."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from tests.helpers.models import tiny_llava, tiny_qwen

from reroute.runtime.patching import Patch
from tools.stock_tests import routed_plugin



def _routing(model):
    handle = model.__dict__.get("_reroute_stock_test_handle")
    return None if handle is None else (handle.config.decision_layers, handle.config.keep_ratios, Patch.installed(model, "generate"))


@pytest.mark.parametrize("build", [lambda: tiny_llava(num_layers=2), lambda: tiny_qwen("qwen2_5_vl", num_layers=2), lambda: tiny_qwen("qwen2_vl", num_layers=2)])
def test_routes_at_layer_1_keep_all_only_while_enabled(monkeypatch, build):
    config = SimpleNamespace()
    monkeypatch.setenv(routed_plugin.ENV_VAR, "1")
    routed_plugin.pytest_configure(config)
    try:
        layers, ratios, patch = _routing(build())
        assert (layers, ratios) == ((1,), (1.0,)) and patch is not None
    finally:
        routed_plugin.pytest_unconfigure(config)
    assert _routing(build()) is None  # __init__ restored


def test_does_nothing_when_disabled(monkeypatch):
    config = SimpleNamespace()
    monkeypatch.setenv(routed_plugin.ENV_VAR, "0")
    routed_plugin.pytest_configure(config)
    assert not hasattr(config, "_reroute_stock_test_patches")
    assert _routing(tiny_llava(num_layers=2)) is None


def test_one_layer_model_is_refused_by_apply(monkeypatch):
    config = SimpleNamespace()
    monkeypatch.setenv(routed_plugin.ENV_VAR, "1")
    routed_plugin.pytest_configure(config)
    try:
        message = "decision layer 1 is outside the decoder: LlamaModel has 1 layers (valid decision layers are 1..0)"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            tiny_llava(num_layers=1)
    finally:
        routed_plugin.pytest_unconfigure(config)
