"""The benchmarks: a registry of `Task`s by name, read from local lmms-lab parquet files.

``get_task("refcoco_val")`` returns the task; lmms-eval's task names are accepted as aliases
(``refcoco_bbox_rec_val``, ``pope``, ...). See docs/evaluation-data.md for the files each
task reads and how to download them.
"""

from __future__ import annotations

from reroute.eval.task import Task
from reroute.eval.tasks.gqa import GqaTask
from reroute.eval.tasks.mmbench import MmbenchTask
from reroute.eval.tasks.mme import MmeTask
from reroute.eval.tasks.pope import PopeTask
from reroute.eval.tasks.rec import REFCOCO, REFCOCO_PLUS, REFCOCOG, RecTask

_REC_SPLITS = {
    "refcoco": (REFCOCO, ("val", "test", "testA", "testB")),
    "refcoco+": (REFCOCO_PLUS, ("val", "testA", "testB")),
    "refcocog": (REFCOCOG, ("val", "test")),
}

#: every task by its name
TASKS: dict[str, Task] = {
    **{
        f"{prefix}_{split}": RecTask(f"{prefix}_{split}", dataset, split)
        for prefix, (dataset, splits) in _REC_SPLITS.items()
        for split in splits
    },
    "pope": PopeTask(),
    "gqa": GqaTask(),
    "mme": MmeTask(),
    "mmbench_en_dev": MmbenchTask(),
}

#: lmms-eval's names for the same tasks
ALIASES: dict[str, str] = {
    f"{prefix}_bbox_rec_{split}": f"{prefix}_{split}" for prefix, (_, splits) in _REC_SPLITS.items() for split in splits
}


class UnknownTaskError(KeyError):
    """No task has the given name (the message lists the valid ones)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


def get_task(name: str) -> Task:
    """The task called ``name`` (or its lmms-eval alias); one-line `UnknownTaskError` listing the valid names."""
    key = ALIASES.get(name, name)
    if key not in TASKS:
        raise UnknownTaskError(
            f"unknown task {name!r}; valid tasks: {', '.join(TASKS)} "
            "(lmms-eval names such as refcoco_bbox_rec_val also work)"
        )
    return TASKS[key]


__all__ = ["ALIASES", "TASKS", "UnknownTaskError", "get_task"]
