"""The routing part of lmms-eval's ``--model_args``: parsed, validated, turned into a `RoutingConfig`.

lmms-eval splits ``--model_args`` on commas outside brackets and quotes, and turns numbers and
``true``/``false`` into Python values; every other value arrives as a string. The routing
keys are taken out here before the wrapped lmms-eval class sees the rest (its constructors
refuse unknown keys). Two ways to choose a routing, never both:

* a preset: ``preset=reroute_vs_fastv,tier=128[,ratios=solved|paper][,num_visual=576]``;
* the `RoutingConfig` fields: ``action=reroute,decision_layers=[3,7,15,23],keep_ratios=[0.14,0.14,0.14,0.14]``
  (a list is written in brackets, or as one number when there is one decision).

``execution=stagewise|per_layer`` goes with either; ``clip=<CLIP checkpoint>`` goes with a cdpruner preset
(CDPruner's relevance as published, `reroute.methods.cdpruner.ClipRelevance`). No routing key at all: the
model runs unrouted.
Everything is checked before the model loads, so a typo costs seconds, not a 7B load.

``min_pixels=`` / ``max_pixels=`` are lmms-eval's own Qwen-VL arguments; `set_pixel_args` fills
them with the family's defaults, the paper's (Qwen2.5-VL: 200704 / 451584, where lmms-eval's own
class would use 200704 / 1605632), and refuses them for a family whose processor takes no bounds.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import reroute
from reroute.backbones import evaluation_protocols
from reroute.budgets import REFERENCE_NUM_LAYERS, REFERENCE_NUM_VISUAL
from reroute.config import RoutingConfig
from reroute.eval.setup import pixel_bounds, uses_instruction_encoder, with_pixel_bounds

PRESET_KEYS: tuple[str, ...] = ("preset", "tier", "ratios", "num_visual")
FIELD_KEYS: tuple[str, ...] = ("action", "decision_layers", "keep_ratios")
ROUTING_KEYS: tuple[str, ...] = (*PRESET_KEYS, *FIELD_KEYS, "execution", "clip")
RATIO_SOURCES: tuple[str, ...] = ("solved", "paper")
#: lmms-eval's Qwen-VL resolution arguments (`set_pixel_args`)
PIXEL_ARGS: tuple[str, str] = ("min_pixels", "max_pixels")


def set_pixel_args(model_args: MutableMapping[str, Any], family: str) -> None:
    """``min_pixels`` / ``max_pixels`` of ``model_args`` (in place) for the evaluation family ``family``:
    the family's defaults, the paper's, where not given; a one-line ValueError where the family's
    processor takes no bounds (LLaVA) or the values are not 0 < min <= max."""
    given = {key: _positive_integer(model_args, key) for key in PIXEL_ARGS if key in model_args}
    protocol = with_pixel_bounds(evaluation_protocols()[family], given.get("min_pixels"), given.get("max_pixels"), PIXEL_ARGS)
    bounds = pixel_bounds(protocol)
    if bounds is not None:
        model_args["min_pixels"], model_args["max_pixels"] = bounds


@dataclass(frozen=True)
class RoutingArgs:
    """What ``--model_args`` asked for; `resolve` makes the `RoutingConfig` once the model is loaded.

    Attributes:
        preset: a `reroute.preset` name, or None when the fields are given instead.
        tier: the budget avg_T, in visual tokens out of ``num_visual`` (the paper's tiers are
            192, 128, 64 of LLaVA-1.5's 576). Keep ratios are fractions, so a model with N
            visual tokens runs at avg_T = tier * N / num_visual.
        ratios: ``"solved"`` (hit the tier exactly on this model's depth) or ``"paper"``.
        num_visual: the visual-token count ``tier`` refers to.
        config: the `RoutingConfig` when the fields were given (validated here, before loading).
        execution: overrides the preset's execution (``"stagewise"`` or ``"per_layer"``).
        clip: the CLIP checkpoint of a cdpruner preset's relevance as published (`reroute.eval.setup.instruction_encoder`).
    """

    preset: str | None = None
    tier: float | None = None
    ratios: str = "solved"
    num_visual: int = REFERENCE_NUM_VISUAL
    config: RoutingConfig | None = None
    execution: str | None = None
    clip: str | None = None

    def __post_init__(self) -> None:
        if (self.preset is None) == (self.config is None):
            raise ValueError("RoutingArgs needs exactly one of preset= and config=")
        config = self.config
        if self.preset is not None:
            # A dry run on the paper's 32-layer decoder checks the name, the tier and the ratio
            # source now; `resolve` repeats it with the loaded model's depth.
            config = reroute.preset(
                self.preset, tier=self.tier, ratios=self.ratios, num_layers=REFERENCE_NUM_LAYERS, num_visual=self.num_visual
            )
            if self.execution is not None:
                dataclasses.replace(config, execution=self.execution)  # validates the execution now
        if self.clip is not None and not uses_instruction_encoder(config):
            raise ValueError("clip= is read by the cdpruner presets (vision_stage='cdpruner') only; drop clip=")

    @classmethod
    def pop_from(cls, model_args: MutableMapping[str, Any]) -> RoutingArgs | None:
        """Take the routing keys out of ``model_args`` (in place); None when there are none."""
        given = {key: model_args.pop(key) for key in ROUTING_KEYS if key in model_args}
        return cls.from_values(given)

    @classmethod
    def from_values(cls, given: dict[str, Any]) -> RoutingArgs | None:
        """Validate the routing keys of ``--model_args`` (values as lmms-eval parsed them)."""
        unknown = sorted(set(given) - set(ROUTING_KEYS))
        if unknown:
            raise ValueError(f"{unknown[0]}= is not a routing argument: use {', '.join(ROUTING_KEYS)}")
        if not given:
            return None
        execution = _text(given, "execution") if "execution" in given else None
        clip = _text(given, "clip") if "clip" in given else None
        if "preset" in given:
            fields = [key for key in FIELD_KEYS if key in given]
            if fields:
                raise ValueError(
                    f"preset= and {fields[0]}= were both given: a preset fixes action, decision_layers and "
                    f"keep_ratios; drop {fields[0]}= or drop preset="
                )
            preset = _text(given, "preset")
            if "tier" not in given:
                raise ValueError(f"preset={preset} needs tier=: the budget avg_T, e.g. tier=128 (of 576 visual tokens)")
            ratios = _text(given, "ratios") if "ratios" in given else "solved"
            if ratios not in RATIO_SOURCES:
                raise ValueError(f"ratios={ratios} is not a ratio source: use ratios=solved or ratios=paper")
            return cls(
                preset=preset,
                tier=_positive_number(given, "tier"),
                ratios=ratios,
                num_visual=_positive_integer(given, "num_visual") if "num_visual" in given else REFERENCE_NUM_VISUAL,
                execution=execution,
                clip=clip,
            )
        orphans = [key for key in PRESET_KEYS if key in given]
        if orphans:
            raise ValueError(f"{orphans[0]}= needs preset=: give preset=<name>,tier=<avg_T>, or the RoutingConfig fields")
        if "decision_layers" not in given or "keep_ratios" not in given:
            raise ValueError(
                "a routing needs preset=<name>,tier=<avg_T>, or both decision_layers= and keep_ratios=, "
                "e.g. decision_layers=[3],keep_ratios=[0.25]"
            )
        fields = {
            "decision_layers": _int_list(given, "decision_layers"),
            "keep_ratios": _float_list(given, "keep_ratios"),
        }
        if "action" in given:
            fields["action"] = _text(given, "action")
        if execution is not None:
            fields["execution"] = execution
        return cls(config=RoutingConfig(**fields), clip=clip)

    def resolve(self, model: Any) -> RoutingConfig:
        """The `RoutingConfig` for the loaded ``model`` (a preset's layers scale to its depth)."""
        if self.config is not None:
            return self.config
        config = reroute.preset(self.preset, tier=self.tier, model=model, ratios=self.ratios, num_visual=self.num_visual)
        if self.execution is not None:
            config = dataclasses.replace(config, execution=self.execution)
        return config

    def describe(self) -> str:
        """One line for logs: what was asked."""
        if self.config is not None:
            return str(self.config)
        execution = f", execution={self.execution}" if self.execution else ""
        clip = f", clip={self.clip}" if self.clip else ""
        return f"preset={self.preset}, tier={self.tier:g} of {self.num_visual}, ratios={self.ratios}{execution}{clip}"


def _text(given: dict[str, Any], key: str) -> str:
    value = given[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key}={value!r} is not a name: write e.g. {_EXAMPLES[key]}")
    return value


def _positive_number(given: dict[str, Any], key: str) -> float:
    value = given[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{key}={value!r} is not a positive number: write e.g. {_EXAMPLES[key]}")
    return value


def _positive_integer(given: dict[str, Any], key: str) -> int:
    value = given[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{key}={value!r} is not a positive integer: write e.g. {_EXAMPLES[key]}")
    return value


def _list(given: dict[str, Any], key: str) -> list[Any]:
    value = given[key]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"{key}={given[key]} is not a list: write e.g. {_EXAMPLES[key]}") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{key}={given[key]!r} is not a list: write e.g. {_EXAMPLES[key]}")
    return list(value)


def _int_list(given: dict[str, Any], key: str) -> tuple[int, ...]:
    values = _list(given, key)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ValueError(f"{key}={given[key]} holds a value that is not an integer: write e.g. {_EXAMPLES[key]}")
    return tuple(values)


def _float_list(given: dict[str, Any], key: str) -> tuple[float, ...]:
    values = _list(given, key)
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise ValueError(f"{key}={given[key]} holds a value that is not a number: write e.g. {_EXAMPLES[key]}")
    return tuple(float(v) for v in values)


_EXAMPLES = {
    "preset": "preset=reroute_vs_fastv",
    "tier": "tier=128",
    "ratios": "ratios=solved",
    "num_visual": "num_visual=576",
    "min_pixels": "min_pixels=200704",
    "max_pixels": "max_pixels=451584",
    "action": "action=reroute",
    "decision_layers": "decision_layers=[3,7,15,23]",
    "keep_ratios": "keep_ratios=[0.1418,0.1418,0.1418,0.1418]",
    "execution": "execution=stagewise",
}
