"""Finding and reading a benchmark split's parquet files under a local data folder.

Benchmarks are read from the parquet files the Hugging Face hub serves for the lmms-lab
datasets; nothing is downloaded. A dataset repository ``<org>/<Name>`` is looked for under
``data_dir`` in these layouts, first match wins:

1. ``<data_dir>/<org>/<Name>/`` for org ``lmms-lab`` or ``lmms-lab-encoder`` (lmms-eval 0.7.3
   moved the benchmarks to the second org, sometimes renaming them: ``RefCOCOplus``);
2. ``<data_dir>/<Name>/`` (a local copy of the repository);
3. the hub cache: ``<data_dir>/datasets--<org>--<Name>/snapshots/<rev>/`` (also under
   ``<data_dir>/hub/``), the revision ``refs/main`` names first, then the newest;
4. ``data_dir`` itself, when it is such a copy or snapshot (its name, or its cache folder's,
   names the dataset; a folder of another dataset is never taken for this one).

Inside the repository a split is ``<config>/<split>-NNNNN-of-NNNNN[-hash].parquet`` (the
default config's folder is ``data``), or the hub's converted layout ``<config>/<split>/NNNN.parquet``.
Names compare case-insensitively. Files are read with pyarrow: the small columns at load
time, images one row group at a time when a sample asks for them.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

#: organisations that publish the benchmarks (lmms-eval <= 0.7.2, then 0.7.3 on)
ORGS: tuple[str, ...] = ("lmms-lab", "lmms-lab-encoder")


class MissingSplitError(FileNotFoundError):
    """A benchmark split has no files under the data folder (the message says how to get them)."""


class DatasetFormatError(ValueError):
    """A benchmark file lacks columns the task reads (the message names the file and the columns)."""


@dataclass(frozen=True)
class HubDataset:
    """A benchmark repository on the hub: its names (first = the one to download) and its org."""

    names: tuple[str, ...]
    org: str = ORGS[0]

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("HubDataset needs at least one name")

    @property
    def dataset_id(self) -> str:
        return f"{self.org}/{self.names[0]}"


def config_folders(config: str) -> tuple[str, ...]:
    """Folders a config's files live in: ``data`` for the default config (``default`` in converted repos)."""
    return ("data", "default") if config == "default" else (config,)


def split_pattern(config: str, split: str) -> str:
    """The file pattern of a split, as error messages show it."""
    return f"{config_folders(config)[0]}/{split}-*.parquet"


def download_command(dataset: HubDataset, config: str, split: str, data_dir: str | Path) -> str:
    """The command that fetches exactly this split into the first layout `find_split` searches."""
    target = Path(data_dir) / dataset.org / dataset.names[0]
    return (
        f"hf download {dataset.dataset_id} --repo-type dataset "
        f"--include '{config_folders(config)[0]}/{split}-*' --local-dir {target}"
    )


def _children(folder: Path, name: str) -> list[Path]:
    """Sub-folders of ``folder`` called ``name``, compared case-insensitively (sorted, exact spelling first)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.lower() == name.lower() and p.is_dir()]
    return sorted(found, key=lambda p: (p.name != name, p.name))


def _cache_snapshots(cache_repo: Path) -> list[Path]:
    """Snapshot folders of a hub-cache repository: the one ``refs/main`` names first, then newest first."""
    snapshots = cache_repo / "snapshots"
    if not snapshots.is_dir():
        return []
    revisions = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    main = cache_repo / "refs" / "main"
    if main.is_file():
        wanted = main.read_text().strip()
        revisions.sort(key=lambda p: p.name != wanted)
    return revisions


def candidate_roots(data_dir: str | Path, dataset: HubDataset) -> list[Path]:
    """Folders that may hold the repository's files, in the order `find_split` tries them."""
    data_dir = Path(data_dir)
    orgs = [dataset.org, *(o for o in ORGS if o != dataset.org)]
    roots: list[Path] = []
    for org in orgs:
        for name in dataset.names:
            roots += [p for org_dir in _children(data_dir, org) for p in _children(org_dir, name)]
    for name in dataset.names:
        roots += _children(data_dir, name)
    for base in (data_dir, data_dir / "hub"):
        for org in orgs:
            for name in dataset.names:
                for cache_repo in _children(base, f"datasets--{org}--{name}"):
                    roots += _cache_snapshots(cache_repo)
    names = {n.lower() for n in dataset.names}
    cache_names = {f"datasets--{o}--{n}".lower() for o in orgs for n in dataset.names}
    resolved = data_dir.resolve() if data_dir.exists() else data_dir
    is_copy = resolved.name.lower() in names
    is_snapshot = resolved.parent.name == "snapshots" and resolved.parent.parent.name.lower() in cache_names
    if is_copy or is_snapshot:
        roots.append(data_dir)
    return list(dict.fromkeys(roots))


def _split_files(root: Path, config: str, split: str) -> list[Path]:
    for folder in config_folders(config):
        for config_dir in _children(root, folder):
            files = sorted(p for p in config_dir.glob(f"{split}-*.parquet") if p.is_file())
            files = files or sorted(p for p in (config_dir / split).glob("*.parquet") if p.is_file())
            if files:
                return files
    return []


def find_split(data_dir: str | Path, dataset: HubDataset, split: str, config: str = "default") -> list[Path]:
    """The parquet files of ``split`` of ``dataset`` (config ``config``) under ``data_dir``, in shard order.

    Raises `MissingSplitError` (one line: the pattern looked for and the download command)
    when no layout holds the split.
    """
    if not Path(data_dir).is_dir():
        raise MissingSplitError(
            f"data folder {data_dir} does not exist (it holds the downloaded benchmarks, see docs/evaluation-data.md); "
            f"download this split with: {download_command(dataset, config, split, data_dir)}"
        )
    for root in candidate_roots(data_dir, dataset):
        files = _split_files(root, config, split)
        if files:
            return files
    raise MissingSplitError(
        f"no '{split}' split of {dataset.dataset_id} under {data_dir} "
        f"(looked for {dataset.org}/{dataset.names[0]}/{split_pattern(config, split)} and the other layouts "
        f"in docs/evaluation-data.md); download it with: {download_command(dataset, config, split, data_dir)}"
    )


class ParquetSplit:
    """One split's parquet shards: small columns read whole, images decoded one row at a time.

    Rows are numbered across shards in shard order. `image` reads the row group that holds
    the row (a few recent row groups stay cached, so consecutive rows are cheap) and decodes
    the ``{"bytes", "path"}`` struct of the Hugging Face ``Image`` feature. Safe to share
    between threads.
    """

    #: row groups whose image column stays in memory
    CACHED_ROW_GROUPS = 4

    def __init__(self, files: Sequence[Path], dataset_id: str) -> None:
        if not files:
            raise ValueError("ParquetSplit needs at least one file")
        self.files = [Path(f) for f in files]
        self.dataset_id = dataset_id
        self._groups: list[tuple[int, int, int]] = []  # (first row, file number, row group number)
        start = 0
        for number, path in enumerate(self.files):
            metadata = pq.ParquetFile(path).metadata
            for group in range(metadata.num_row_groups):
                self._groups.append((start, number, group))
                start += metadata.row_group(group).num_rows
        self.num_rows = start
        self._cache: OrderedDict[tuple[int, int], list[Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.num_rows

    def __getstate__(self) -> dict[str, Any]:
        # Samples travel to worker processes by pickle: send the file index, not the lock or cache.
        state = self.__dict__.copy()
        del state["_cache"], state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache = OrderedDict()
        self._lock = threading.Lock()

    def column_names(self) -> set[str]:
        """The columns every shard has."""
        return set.intersection(*(set(pq.ParquetFile(path).schema_arrow.names) for path in self.files))

    def require(self, columns: Sequence[str]) -> None:
        """One-line `DatasetFormatError` if a shard lacks any of ``columns``."""
        for path in self.files:
            names = set(pq.ParquetFile(path).schema_arrow.names)
            missing = [c for c in columns if c not in names]
            if missing:
                raise DatasetFormatError(
                    f"{path} has no column(s) {', '.join(missing)}: it is not a {self.dataset_id} file "
                    f"(columns: {', '.join(sorted(names))})"
                )

    def columns(self, names: Sequence[str]) -> dict[str, list[Any]]:
        """The values of ``names`` for every row (Python objects), read without the images."""
        self.require(names)
        table = pa.concat_tables([pq.read_table(path, columns=list(names)) for path in self.files])
        return {name: table.column(name).to_pylist() for name in names}

    def _locate(self, row: int) -> tuple[int, int, int]:
        if not 0 <= row < self.num_rows:
            raise IndexError(f"row {row} out of range for {self.num_rows} rows of {self.dataset_id}")
        lo, hi = 0, len(self._groups) - 1
        while lo < hi:  # last group whose first row is <= row
            mid = (lo + hi + 1) // 2
            if self._groups[mid][0] <= row:
                lo = mid
            else:
                hi = mid - 1
        first, number, group = self._groups[lo]
        return number, group, row - first

    def _image_values(self, number: int, group: int, column: str) -> list[Any]:
        key = (number, group)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        values = pq.ParquetFile(self.files[number]).read_row_group(group, columns=[column]).column(column).to_pylist()
        with self._lock:
            self._cache[key] = values
            while len(self._cache) > self.CACHED_ROW_GROUPS:
                self._cache.popitem(last=False)
        return values

    def image_value(self, row: int, column: str = "image") -> dict[str, Any]:
        """The stored ``{"bytes", "path"}`` value of ``column`` at ``row``."""
        number, group, offset = self._locate(row)
        return self._image_values(number, group, column)[offset]

    def image(self, row: int, column: str = "image") -> Image.Image:
        """The decoded RGB image of ``row``, as `datasets` decodes it (EXIF orientation applied)."""
        return decode_image(self.image_value(row, column), self.files[self._locate(row)[0]]).convert("RGB")

    def image_size(self, row: int, column: str = "image") -> tuple[int, int]:
        """(width, height) of the image of ``row`` as `image` returns it, read from the header only."""
        value = self.image_value(row, column)
        with _open_image(value, self.files[self._locate(row)[0]]) as image:
            width, height = image.size
            # EXIF orientations 5-8 rotate by 90 degrees: the decoded image has width and height swapped.
            if image.getexif().get(Image.ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):
                width, height = height, width
        return width, height


def _open_image(value: dict[str, Any] | None, source: Path) -> Image.Image:
    if value is None:
        raise DatasetFormatError(f"{source} has an empty image cell")
    if value.get("bytes"):
        return Image.open(io.BytesIO(value["bytes"]))
    path = value.get("path")
    if path and Path(path).is_file():
        return Image.open(path)
    raise DatasetFormatError(f"{source} has an image with neither bytes nor a readable path ({path!r})")


def decode_image(value: dict[str, Any] | None, source: Path) -> Image.Image:
    """The image of a Hugging Face ``Image`` struct, decoded by `datasets` (the way lmms-eval gets it)."""
    import datasets  # imported here: reading a task's questions does not need it

    _open_image(value, source).close()  # one-line errors for empty cells before datasets sees them
    return datasets.Image().decode_example(value)


class HubTask:
    """What every task reading one `HubDataset` split shares (mixed into the frozen task
    dataclasses, which declare ``dataset`` and ``split``): the dataset's id and opening its files."""

    dataset: HubDataset
    split: str

    @property
    def dataset_id(self) -> str:
        return self.dataset.dataset_id

    def open_split(self, data_dir: str | Path, config: str = "default") -> ParquetSplit:
        """The task's split (config ``config``) under ``data_dir``; `MissingSplitError` when absent."""
        return ParquetSplit(find_split(data_dir, self.dataset, self.split, config), self.dataset_id)
