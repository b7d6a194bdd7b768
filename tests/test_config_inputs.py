"""RoutingConfig takes what users naturally pass (one number, numpy scalars and arrays) and refuses
bools and strings with the same one-line messages as any other bad value (issue 16, item 8)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from reroute import RoutingConfig


@pytest.mark.parametrize(
    "layers, ratios, expected_layers, expected_ratios",
    [
        (3, 0.5, (3,), (0.5,)),
        ((2, 4), 0.25, (2, 4), (0.25, 0.25)),  # one ratio for every decision layer
        (np.int64(3), np.float32(0.5), (3,), (0.5,)),
        (np.array([2, 4]), np.array([0.5, 0.25]), (2, 4), (0.5, 0.25)),
        ([np.int32(1), 5], [np.float64(0.75), 1], (1, 5), (0.75, 1.0)),
    ],
)
def test_scalars_and_numpy_numbers_are_accepted(layers, ratios, expected_layers, expected_ratios):
    config = RoutingConfig("reroute", layers, ratios)
    assert config.decision_layers == expected_layers and config.keep_ratios == expected_ratios
    assert all(type(d) is int for d in config.decision_layers) and all(type(r) is float for r in config.keep_ratios)
    assert config == RoutingConfig("reroute", expected_layers, expected_ratios)
    assert repr(config) == repr(RoutingConfig("reroute", expected_layers, expected_ratios))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(decision_layers=True), "decision_layers must be integers, got True"),
        (dict(decision_layers="3"), "decision_layers must be integers, got '3'"),
        (dict(decision_layers=(2.0,)), "decision_layers must be integers, got (2.0,)"),
        (dict(decision_layers=(2, True)), "decision_layers must be integers, got (2, True)"),
        (dict(decision_layers=(np.bool_(True),)), "decision_layers must be integers, got (np.True_,)"),
        (dict(decision_layers=None), "decision_layers must be integers, got None"),
        (dict(keep_ratios="0.5"), "keep_ratios must be numbers, got '0.5'"),
        (dict(keep_ratios=True), "keep_ratios must be numbers, got True"),
        (dict(keep_ratios=("0.5",)), "keep_ratios must be numbers, got ('0.5',)"),
        (dict(keep_ratios=(True,)), "keep_ratios must be numbers, got (True,)"),
        (dict(keep_ratios=None), "keep_ratios must be numbers, got None"),
        (dict(keep_ratios=np.float64("nan")), "keep ratio nan is outside (0, 1]: each keep ratio must be > 0 and <= 1"),
        (
            dict(decision_layers=np.array([2, 4]), keep_ratios=[0.5]),
            "keep_ratios has 1 values but decision_layers has 2: give one ratio per decision layer",
        ),
    ],
)
def test_bools_strings_and_non_numbers_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        RoutingConfig(**kwargs)
