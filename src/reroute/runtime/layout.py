"""Compact layouts: which full-length positions a compact hidden-state tensor holds.

Samples of a batch keep different numbers of tokens, so a compact tensor is as long as the
longest active set and the rest of each row is *slack*. Slack rows point at a trash row
appended after the last position of the full-length buffer, so scattering a compact tensor
back never touches a real token.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Layout:
    """Positions held by a compact sequence.

    index: ``(B, n)`` long, original positions in ``[0, L]`` (``L`` is the trash row), increasing
        (in sequence order instead for `from_order`).
    valid: ``(B, n)`` bool, False on slack.
    length: ``L``, the full prompt length.
    """

    index: torch.Tensor
    valid: torch.Tensor
    length: int

    @classmethod
    def from_active(cls, active: torch.Tensor) -> Layout:
        """Layout of the positions marked True in ``active`` (``(B, L)`` bool), in original order."""
        batch, length = active.shape
        counts = active.sum(dim=1)
        width = int(counts.max()) if batch else 0
        # A stable sort of "inactive" puts each row's active positions first, in original order.
        index = torch.sort((~active).to(torch.int8), dim=1, stable=True).indices[:, :width]
        valid = torch.arange(width, device=active.device)[None, :] < counts[:, None]
        return cls(index=index.masked_fill(~valid, length), valid=valid, length=length)

    @classmethod
    def from_order(cls, active: torch.Tensor, order: torch.Tensor) -> Layout:
        """Layout of the positions marked True in ``active``, in increasing ``order`` (``(B, L)`` long,
        distinct within a row) rather than position order: SparseVLM v1.5's merged tokens run after the
        kept visual tokens although their rows come last (docs/semantics.md §21)."""
        batch, length = active.shape
        counts = active.sum(dim=1)
        width = int(counts.max()) if batch else 0
        key = order.masked_fill(~active, int(order.max()) + 1 if order.numel() else 0)
        index = torch.sort(key, dim=1, stable=True).indices[:, :width]
        valid = torch.arange(width, device=active.device)[None, :] < counts[:, None]
        return cls(index=index.masked_fill(~valid, length), valid=valid, length=length)

    @property
    def width(self) -> int:
        return self.index.shape[1]

    @property
    def is_full(self) -> bool:
        """True when the compact sequence is the whole prompt for every sample (nothing to gather)."""
        return self.width == self.length and bool(self.valid.all())

    def active(self) -> torch.Tensor:
        """``(B, L)`` bool mask of the positions this layout holds."""
        mask = torch.zeros(self.index.shape[0], self.length + 1, dtype=torch.bool, device=self.index.device)
        mask.scatter_(1, self.index, self.valid)
        return mask[:, : self.length]

    @functools.cached_property
    def _flat_index(self) -> torch.Tensor:
        """``(B * n,)`` row indices into ``full`` flattened to ``(B * (L + 1), ...)``."""
        rows = torch.arange(self.index.shape[0], device=self.index.device)[:, None]
        return (self.index + rows * (self.length + 1)).flatten()

    # Both move whole rows through the flattened (batch x position) axis: index_select /
    # index_copy_ are several times faster than advanced indexing ``full[rows, index]`` on CPU.
    def gather(self, full: torch.Tensor) -> torch.Tensor:
        """Rows of ``full`` (``(B, L + 1, ...)``, trash row last) at this layout's positions."""
        flat = full.flatten(0, 1).index_select(0, self._flat_index)
        return flat.view(*self.index.shape, *full.shape[2:])

    def scatter_(self, full: torch.Tensor, compact: torch.Tensor) -> None:
        """Write ``compact`` into ``full`` (in place; ``full`` must be contiguous); slack lands on the trash row."""
        full.view(-1, *full.shape[2:]).index_copy_(0, self._flat_index, compact.flatten(0, 1))


def with_trash_row(tensor: torch.Tensor) -> torch.Tensor:
    """``(B, L, ...)`` -> ``(B, L + 1, ...)`` with a zero row for slack to point at."""
    pad = tensor.new_zeros((tensor.shape[0], 1, *tensor.shape[2:]))
    return torch.cat([tensor, pad], dim=1)
