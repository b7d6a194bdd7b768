"""The family registry: one adapter per model family (`reroute.backbones.base.Backbone`).

`backbone_for(model, processor)` picks a model's adapter by its class (and, for a
specialisation such as the demo model, its processor); `backbone_for_config` by
``config.model_type``. Everything else asks these: `grids_for`, `evaluation_protocols`,
`released_shapes`. Each adapter file of this package registers its class on import, and an
application registers its own family the same way (`reroute.demo` registers the demo model's).
docs/adding-a-backbone.md.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence
from typing import Any

from torch import nn

from reroute.backbones.base import BACKBONES, Backbone, NotDeclared, ReleasedShape, register_backbone
from reroute.backbones.evaluation import EvalProtocol
from reroute.backbones.grids import TokenGrid
from reroute.backbones.refused import refusal
from reroute.runtime.adapter import Positions

# Every module here is imported, so each adapter file registers its own class (`register_backbone`):
# a new family is one file (docs/adding-a-backbone.md). pkgutil lists the modules sorted by name.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def supported_model_classes() -> list[str]:
    """The class names some registered adapter handles, sorted (registration order follows module names)."""
    return sorted({name for backbone in BACKBONES for name in backbone.model_classes})


def _most_specific(candidates: list[type[Backbone]], processor: Any) -> type[Backbone] | None:
    # a specialisation (a subclass: the demo of LLaVA-1.5) is asked before the adapter it refines
    for backbone in sorted(candidates, key=lambda b: -len(b.__mro__)):
        if backbone.recognizes(processor):
            return backbone
    return None


def backbone_for(model: nn.Module, processor: Any = None) -> Backbone:
    """The adapter of ``model`` (by its class; ``processor`` tells a specialisation apart).

    TypeError (one line) for a refused family, a class no adapter handles, or a model its adapter refuses.
    """
    name = type(model).__name__
    refused = refusal(name)
    if refused is not None:
        raise TypeError(refused)
    backbone = _most_specific([b for b in BACKBONES if b.handles(model)], processor)
    if backbone is None:
        raise TypeError(f"reroute does not support {name}; load one of {', '.join(supported_model_classes())}")
    if (reason := backbone.refusal(model)) is not None:
        raise TypeError(reason)
    return backbone()


def backbone_for_config(model: Any) -> Backbone:
    """The adapter of a transformers config (or of a model: its class decides), by ``model_type``."""
    if isinstance(model, nn.Module):
        return backbone_for(model)
    config = getattr(model, "config", model)
    model_type = getattr(config, "model_type", None)
    backbone = _most_specific([b for b in BACKBONES if model_type in b.model_types], None)
    if backbone is None:
        known = ", ".join(dict.fromkeys(t for b in BACKBONES for t in b.model_types))
        raise TypeError(f"no family adapter for model type {model_type!r}; registered model types: {known}")
    return backbone()


def grids_for(
    model: nn.Module, processor: Any, inputs: dict, image_sizes: Sequence[tuple[int, int]], sample: int = 0
) -> list[TokenGrid]:
    """The token grids of sample ``sample`` of a processed batch (`reroute.backbones.grids`), as the
    model's family declares them; `NotDeclared` for a family that declares none.

    image_sizes: the original ``(width, height)`` of that sample's images, in prompt order.
    """
    backbone = backbone_for(model, processor)
    grids = backbone.require("grids", "show and analyze place each visual token on its image with it")
    return grids(model.config, processor, inputs, image_sizes, sample)


def evaluation_protocols() -> dict[str, EvalProtocol]:
    """Every declared evaluation protocol by its name (``--family``), in registration order."""
    protocols: dict[str, EvalProtocol] = {}
    for backbone in BACKBONES:
        protocol = backbone.evaluation
        if protocol is not None and protocols.setdefault(protocol.name, protocol) is not protocol:
            raise ValueError(f"two families declare an evaluation protocol named {protocol.name!r}")
    return protocols


def released_shapes() -> dict[str, ReleasedShape]:
    """Every declared released shape by its name (``reroute cost --model``), in registration order."""
    shapes: dict[str, ReleasedShape] = {}
    for backbone in BACKBONES:
        for shape in backbone.released:
            if shapes.setdefault(shape.name, shape) is not shape:
                raise ValueError(f"two families declare a released shape named {shape.name!r}")
    return shapes


__all__ = [
    "BACKBONES",
    "Backbone",
    "EvalProtocol",
    "NotDeclared",
    "Positions",
    "ReleasedShape",
    "backbone_for",
    "backbone_for_config",
    "evaluation_protocols",
    "grids_for",
    "register_backbone",
    "released_shapes",
    "supported_model_classes",
]
