"""The contract between evaluation datasets and the runner.

A `Task` turns a benchmark's local files into `EvalSample`s, writes the question a model
family is asked, parses that family's answer and scores a list of per-sample records. The
runner (`reroute.eval.runner`) owns models, chat templates, batching, sharding and files;
it never looks inside a benchmark. Adding a benchmark is one module under `reroute.eval.tasks`
and one entry in its registry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image


def model_families() -> tuple[str, ...]:
    """The model families a task can write prompts for: the evaluation protocols the family adapters
    declare (`reroute.backbones.evaluation_protocols`), by name; ``demo`` once `reroute.demo` is imported."""
    from reroute.backbones import evaluation_protocols

    return tuple(evaluation_protocols())


@dataclass(frozen=True)
class EvalSample:
    """One question of one benchmark.

    task: the task name (``"refcoco_val"``, ``"pope"``, ...).
    id: unique and stable within the task (the resume key; survives reloading the files).
    question: the benchmark's own text for this sample (a referring expression, a question),
        before any family-specific prompt is wrapped around it.
    target: JSON-serialisable ground truth the task's `score` reads.
    meta: JSON-serialisable extra fields (category, question id, image size, ...).
    load_images: decodes the sample's images on demand (datasets are not held in memory).
    """

    task: str
    id: str
    question: str
    target: Any
    meta: dict[str, Any] = field(default_factory=dict)
    load_images: Callable[[], list[Image.Image]] = field(default=lambda: [], repr=False, compare=False)


@dataclass(frozen=True)
class Metric:
    """A metric's value and its 95 % interval over ``n`` samples (Wilson for proportions, bootstrap otherwise)."""

    value: float
    low: float
    high: float
    n: int


class Task(Protocol):
    """What every benchmark module provides (see `reroute.eval.tasks`)."""

    name: str
    #: "rec" | "pope" | "gqa" | "mme" | "mmbench" | ...
    family: str
    #: the Hugging Face dataset id the files come from (named in "missing split" errors)
    dataset_id: str

    def load(self, data_dir: str | Path, limit: int | None = None) -> Sequence[EvalSample]:
        """The samples, read from local files under ``data_dir``; one-line error when a file is missing."""
        ...

    def prompt(self, sample: EvalSample, model_family: str) -> str:
        """The user text for ``model_family`` (no chat template, no image placeholder); what differs per
        family comes from its protocol (`reroute.eval.tasks.common.family_protocol`)."""
        ...

    def max_new_tokens(self) -> int:
        """How many tokens the answer may take (greedy decoding)."""
        ...

    def parse(self, sample: EvalSample, answer: str, model_family: str, frame: tuple[int, int] | None = None) -> dict[str, Any]:
        """The JSON-serialisable prediction read from the model's ``answer``.

        ``frame``: (width, height) of the image as the model saw it, for tasks whose answers
        may be in pixels (REC); None means the original image size (the paper's convention).
        """
        ...

    def score(self, records: Sequence[dict[str, Any]]) -> dict[str, Metric]:
        """Metrics over per-sample records (each holds ``id``, ``target``, ``meta``, ``prediction``)."""
        ...
