"""Decision layers on other decoder depths, and a model's decoder depth."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reroute.runtime.dims import text_config

#: LLaVA-1.5's decoder depth: the depth the paper's decision layers are published for.
REFERENCE_NUM_LAYERS = 32


def scale_decision_layers(
    layers: Sequence[int], num_layers: int, reference_num_layers: int = REFERENCE_NUM_LAYERS
) -> tuple[int, ...]:
    """Move decision layers published for a ``reference_num_layers``-layer decoder to ``num_layers``.

    Each layer ``d`` goes to ``round(d * num_layers / reference)``, halves rounding up
    (exact integer arithmetic, so the result never depends on float noise): on 28 layers
    (3, 7, 15, 23) -> (3, 6, 13, 20) and (2, 7, 15, 23) -> (2, 6, 13, 20), Qwen2.5-VL's
    published layers. Then collisions are resolved deterministically so the layers stay
    strictly increasing inside [1, num_layers - 1]:

    1. clamp every layer into [1, num_layers - 1];
    2. left to right, a layer that is not above its predecessor moves to predecessor + 1;
    3. right to left, a layer that is not below its successor (or past the last layer)
       moves to successor - 1.

    So on 8 layers (3, 7, 15, 23) -> (1, 2, 4, 6). A depth with fewer than
    ``len(layers) + 1`` layers cannot hold the schedule and raises.
    """
    count = len(layers)
    if num_layers < count + 1:
        raise ValueError(
            f"a {count}-decision schedule needs at least {count + 1} decoder layers (decisions at layers 1.."
            f"num_layers-1), got num_layers={num_layers}; use a deeper model or a schedule with fewer decisions"
        )
    scaled = [(2 * d * num_layers + reference_num_layers) // (2 * reference_num_layers) for d in layers]
    scaled = [min(max(d, 1), num_layers - 1) for d in scaled]
    for i in range(1, count):
        scaled[i] = max(scaled[i], scaled[i - 1] + 1)
    upper = num_layers
    for i in reversed(range(count)):
        scaled[i] = min(scaled[i], upper - 1)
        upper = scaled[i]
    return tuple(scaled)


def num_decoder_layers(model: Any) -> int:
    """The decoder's layer count of a model, a transformers config, or an int."""
    if isinstance(model, int) and not isinstance(model, bool):
        return model
    layers = getattr(text_config(model), "num_hidden_layers", None)
    if not isinstance(layers, int):
        raise ValueError(
            f"cannot find the decoder's layer count in {type(model).__name__}: pass a transformers model or config "
            "with text_config.num_hidden_layers, or num_layers=<int>"
        )
    return layers


def resolve_depth(model: Any, num_layers: int | None) -> int:
    if model is None and num_layers is None:
        return REFERENCE_NUM_LAYERS
    depth = num_decoder_layers(model) if model is not None else num_layers
    if num_layers is not None and depth != num_layers:
        raise ValueError(f"num_layers={num_layers} disagrees with the model's {depth} decoder layers: pass one of them")
    assert depth is not None
    return depth
