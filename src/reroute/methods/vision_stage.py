"""Vision-side stages: reduce the visual tokens after the vision tower and projector, before
the decoder (Nüwa's stage 1). ``RoutingConfig(vision_stage=None)`` (the default) has none.

A stage is chosen by name and configured by ``RoutingConfig.vision_params`` (a flat mapping of
numbers), which the stage checks at config construction.
"""

from __future__ import annotations

from collections.abc import Mapping

from reroute.methods.registry import Registry


class VisionStage:
    """Base vision-side stage. Subclasses set ``name`` and ``params`` (the accepted parameter
    names with their defaults) and implement the reduction (see `reroute.nuwa`)."""

    name: str = ""
    #: accepted parameters and their defaults
    params: Mapping[str, float] = {}

    def check_params(self, params: Mapping[str, float]) -> None:
        """Raise a one-line ValueError for an unknown or out-of-range parameter."""
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise ValueError(
                f"vision stage {self.name!r} has no parameter {unknown[0]!r}: use {', '.join(sorted(self.params))}"
            )

    def resolved(self, params: Mapping[str, float]) -> dict[str, float]:
        """``params`` with the defaults filled in."""
        return {**self.params, **params}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


VISION_STAGES: Registry[VisionStage] = Registry("vision stage", "vision_stage")


def register_vision_stage(cls: type[VisionStage]) -> type[VisionStage]:
    """Class decorator: register one instance of ``cls`` under ``cls.name`` (duplicates refused)."""
    VISION_STAGES.register(cls())
    return cls


def get_vision_stage(name: str) -> VisionStage:
    return VISION_STAGES.get(name)
