"""Per-sample JSONL files that survive crashes: append-and-flush, resume, canonical rewrite.

Each finished sample is one JSON line, written and flushed at once, so a crash loses at
most the line being written. Reading back drops a truncated last line (and cuts it from the
file, so the next append starts on a fresh line); a damaged line elsewhere is an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def read_records(path: Path) -> list[dict[str, Any]]:
    """The complete records of ``path`` in file order ([] when it does not exist).

    A last line without its newline, or one that is not valid JSON, is what a crash in the
    middle of a write leaves: it is dropped and cut from the file.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    offset = 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines, 1):
        last = number == len(lines)
        if last and line == b"":
            break
        try:
            if last:  # no newline after it: the write did not finish
                raise ValueError("incomplete line")
            record = json.loads(line)
        except ValueError:
            if last or (number == len(lines) - 1 and lines[-1] == b""):
                with open(path, "r+b") as f:  # cut the torn line so appends stay line-aligned
                    f.truncate(offset)
                break
            raise ValueError(f"{path}: line {number} is not a JSON record; delete or repair the file to resume") from None
        if not isinstance(record, dict) or "id" not in record:
            raise ValueError(f"{path}: line {number} is not a sample record (no 'id'); delete the file to start over")
        records.append(record)
        offset += len(line) + 1
    return records


def encode(record: dict[str, Any]) -> str:
    """One record as one line (no newline inside: JSON escapes them)."""
    return json.dumps(record, ensure_ascii=False)


class Appender:
    """Appends records to a JSONL file, flushing after each (the file is created on first write)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = None

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(encode(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Appender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_atomically(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace ``path`` by ``records`` in one step (a crash leaves the old file or the new one)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(encode(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
