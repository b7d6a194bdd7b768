"""Instance-attribute patches that `apply` installs and `restore` undoes, and nothing more.

A `Patch` replaces one method of one module object (``model.generate``, a module's
``forward``) by setting an instance attribute, so classes, parameters and buffers are never
touched. It keeps what was there before:

- a wrapper another library installed first (accelerate's device hooks set ``forward`` on the
  instance too) is what the routed path calls, and what ``undo`` puts back;
- accelerate's hook (`accelerate_hooked`) is honoured from the inside: it calls the module's
  ``_old_forward`` between its ``pre_forward`` and ``post_forward``, so a forward that must be
  replaced (the decoder's) is patched there, and the hook keeps moving inputs and loading
  offloaded weights around the replacement exactly as it does around the stock forward;
- a wrapper installed *after* ours cannot be unwound without breaking it, so ``undo`` then
  leaves the patch in their chain as a pass-through to the original;
- ``copy.deepcopy`` and pickling a patched module give the *plain* module: the copy's
  attribute becomes the original method bound to the copy (routing state, traces and caches
  belong to the handle, which is not copied). Route the copy with ``reroute.apply`` again.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

from torch import nn

_ABSENT = object()


def _same(callable_: Any) -> Any:
    """Unpickling helper: the pickled original method (or wrapper) itself."""
    return callable_


def accelerate_hooked(module: nn.Module) -> bool:
    """True when ``module.forward`` is accelerate's hook (``accelerate.hooks.add_hook_to_module``): a
    ``functools.partial`` of its ``new_forward`` over this module, which runs ``module._hf_hook.pre_forward``,
    then ``module._old_forward``, then ``module._hf_hook.post_forward``. Told apart by duck typing, so
    accelerate stays an optional dependency."""
    forward = module.__dict__.get("forward")
    return (
        isinstance(forward, functools.partial)
        and getattr(forward.func, "__module__", None) == "accelerate.hooks"
        and len(forward.args) == 1
        and forward.args[0] is module
        and module.__dict__.get("_hf_hook") is not None
        and "_old_forward" in module.__dict__
    )


def execution_devices(module: nn.Module) -> list[str]:
    """The execution devices accelerate's hooks name inside ``module`` (its own and its submodules'), sorted.

    Offloaded weights ("cpu", "disk") are loaded onto their unit's execution device, so a map that
    offloads layers still has one; layers split across accelerators have several."""
    devices = set()
    for sub in module.modules():
        hook = sub.__dict__.get("_hf_hook")
        for one in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):  # SequentialHook chains
            device = getattr(one, "execution_device", None)
            if device is not None:
                devices.add(str(device))
    return sorted(devices)


def forward_attribute(module: nn.Module) -> str:
    """Where a replacement of ``module``'s own forward goes: inside accelerate's hook when there is one
    (``_old_forward``, so the hook still runs around it), else ``forward``."""
    return "_old_forward" if accelerate_hooked(module) else "forward"


class Patch:
    """``module.<name>`` replaced by ``replacement(original, *args, **kwargs)`` while active."""

    def __init__(self, module: nn.Module, name: str, replacement: Callable[..., Any]) -> None:
        self._name = name
        self._previous = module.__dict__.get(name, _ABSENT)  # someone else's instance attribute
        self._original = getattr(module, name)  # their wrapper, or the class method bound to module
        self._replacement = replacement
        self._active = True
        # generate() and other callers inspect the signature: show the original's
        self.__wrapped__ = self._original
        self.__name__ = getattr(self._original, "__name__", name)
        self.__doc__ = getattr(self._original, "__doc__", None)
        module.__dict__[name] = self

    @staticmethod
    def foreign(module: nn.Module, name: str, method: str | None = None) -> bool:
        """True when another library set ``module.<name>`` on the instance (a copy's plain bound method is not).

        ``method``: the class method a plain attribute is bound to, when it is not ``name``
        (accelerate keeps the plain ``forward`` as ``_old_forward``)."""
        current = module.__dict__.get(name)
        if current is None:
            return False
        plain = getattr(current, "__self__", None) is module and getattr(current, "__func__", None) is getattr(
            type(module), method or name, None
        )
        return not plain and not isinstance(current, Patch)

    @staticmethod
    def installed(module: nn.Module, name: str) -> Patch | None:
        """The active `Patch` of ``module.<name>``, found through wrappers installed after it."""
        current = module.__dict__.get(name)
        seen = set()
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            if isinstance(current, Patch):
                return current if current._active else None
            current = getattr(current, "__wrapped__", None)
        return None

    @property
    def original(self) -> Callable[..., Any]:
        return self._original

    def __call__(self, *args, **kwargs):
        if not self._active:
            return self._original(*args, **kwargs)
        return self._replacement(self._original, *args, **kwargs)

    def undo(self, module: nn.Module) -> None:
        """Remove what this patch added: the previous attribute comes back (or none at all)."""
        self._active = False
        if module.__dict__.get(self._name) is self:
            if self._previous is _ABSENT:
                del module.__dict__[self._name]
            else:
                module.__dict__[self._name] = self._previous
        # else: a wrapper installed after us holds us; we stay in its chain as a pass-through

    # A copy of the module is plain: its attribute is the original, bound to (or wrapping) the copy.
    def __deepcopy__(self, memo: dict) -> Any:
        return copy.deepcopy(self._original, memo)

    def __reduce__(self):
        return (_same, (self._original,))
