"""Which samples this process evaluates, and how processes meet: accelerate's `PartialState`.

Launched with ``accelerate launch`` (any number of processes, on any number of nodes), rank
``r`` of ``W`` takes samples ``r, r + W, r + 2W, ...``; objects are exchanged with
``accelerate.utils.gather_object`` (through torch.distributed, so no shared file system is
assumed). Started any other way, or without accelerate installed, there is one process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place among the evaluation processes."""

    rank: int = 0
    world: int = 1
    state: Any = None  # accelerate.PartialState when launched by accelerate with more than one process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def take(self, items: Sequence[T]) -> list[T]:
        """This rank's items by stride: ``items[rank::world]``."""
        return list(items[self.rank :: self.world])

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def all_gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (on every rank)."""
        if self.state is None:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])


def current_shard() -> Shard:
    """The shard of this process: accelerate's ranks when launched by accelerate, else one process."""
    try:
        from accelerate import PartialState
    except ImportError:  # accelerate is optional: one process
        return Shard()
    state = PartialState()
    if state.num_processes <= 1:
        return Shard()
    return Shard(rank=state.process_index, world=state.num_processes, state=state)


def default_device() -> str:
    """accelerate's device for this process when launched by it, else cuda if present, else cpu."""
    import torch

    try:
        from accelerate import PartialState
    except ImportError:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(PartialState().device)
