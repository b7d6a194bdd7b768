"""The name -> part tables a method is made of: scorers, actions, vision stages and presets.

They sit below everything that consults them (the config validates part names, the engine
looks its parts up, the cost accounting asks them), and the method folders under
`reroute.methods` fill them on import: see docs/methods.md.

One registry per kind of part. Registering a name twice is refused, so a new part can never
silently replace a built-in one; a lookup of an unknown name is a one-line error that lists
the registered names (what the user can choose instead).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Parts of one kind, by name, in registration order.

    ``kind`` names the part in error messages and ``field`` the RoutingConfig field that
    chooses it, so errors read ``scorer must be one of ('last_token',), got 'x'``.
    """

    def __init__(self, kind: str, field: str) -> None:
        self.kind = kind
        self.field = field
        self._parts: dict[str, T] = {}

    def register(self, part: T) -> T:
        """Add ``part`` under ``part.name``; refuses a name that is taken."""
        name = getattr(part, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty string `name`, got {name!r}")
        if name in self._parts:
            raise ValueError(f"a {self.kind} named {name!r} is already registered: choose another name")
        self._parts[name] = part
        return part

    def register_class(self, cls: type[T]) -> type[T]:
        """Class decorator: register one instance of ``cls`` under ``cls.name``; returns ``cls``."""
        self.register(cls())
        return cls

    def unregister(self, name: str) -> None:
        """Remove a part (for tests that register a temporary one)."""
        if name not in self._parts:
            raise KeyError(f"no {self.kind} named {name!r} is registered")
        del self._parts[name]

    def get(self, name: str) -> T:
        if name not in self._parts:
            raise ValueError(f"{self.field} must be one of {self.names()}, got {name!r}")
        return self._parts[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._parts)

    def __contains__(self, name: object) -> bool:
        return name in self._parts

    def __iter__(self) -> Iterator[T]:
        return iter(self._parts.values())


#: scoring rules (`reroute.methods.scorer.Scorer`), chosen by ``RoutingConfig.scorer``
SCORERS: Registry[Any] = Registry("scorer", "scorer")
#: actions (`reroute.methods.action.Action`), chosen by ``RoutingConfig.action``
ACTIONS: Registry[Any] = Registry("action", "action")
#: vision-side stages (`reroute.methods.vision_stage.VisionStage`), chosen by ``RoutingConfig.vision_stage``
VISION_STAGES: Registry[Any] = Registry("vision stage", "vision_stage")
#: published schedules (`reroute.budgets.presets.PresetSpec`), chosen by name in `reroute.preset`
PRESETS: Registry[Any] = Registry("preset", "preset")
