"""Which optional extra (pyproject.toml `[project.optional-dependencies]`) a command needs, checked
before any work: a base install answers in one line naming the pip command, not with a traceback
from deep inside after a model has loaded."""

from __future__ import annotations

import importlib.util

from reroute.errors import UserError

#: extra -> the modules of it that the commands cannot run without. accelerate (in `eval`) is left out:
#: without it `reroute eval` runs as one process (`reroute.eval.shard.current_shard`).
EXTRAS: dict[str, tuple[str, ...]] = {
    "viz": ("matplotlib",),
    "eval": ("datasets", "pyarrow"),
}


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` this environment cannot import (looked up, not imported)."""
    return [name for name in EXTRAS[extra] if not _importable(name)]


def install_hint(extra: str) -> str:
    return f"pip install 'reroute[{extra}]'"


def require_extra(extra: str, needed_by: str) -> None:
    """`UserError` naming the extra and its pip command when ``extra`` is not installed;
    ``needed_by`` says what needs it ("drawing the figure", "--task", "--plot")."""
    missing = missing_modules(extra)
    if missing:
        raise UserError(
            f"{needed_by} needs the '{extra}' extra (missing: {', '.join(missing)}): {install_hint(extra)}"
        )


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # already imported without a spec (a stand-in module): it is there
        return True
