"""Evaluate one model under one routing choice on one task: batched, resumable, shardable.

`evaluate_task` runs the samples a task loads through the model (routed once with
`reroute.apply`, or vanilla), ``batch_size`` at a time, and appends every finished sample to
``<run_dir>/<task>.jsonl`` at once (flushed), so a crash loses nothing and a rerun skips the
ids already there. Under ``accelerate launch`` each rank takes every ``world``-th sample and
appends to its own ``<task>.rank<r>.jsonl``; after a barrier rank 0 gathers every record and
writes ``<task>.jsonl`` in the task's sample order, so the file and the summary do not depend
on how many processes ran. Summaries (`reroute.eval.summary.summarize`) are computed from the
records as read back from that file, so an interrupted-and-resumed run summarises exactly like an
uninterrupted one.

A record holds: id, prompt, answer (the decoded text), prediction (`Task.parse`), target,
meta, frame (the resized image frame given to `parse`, or null), num_visual (the visual tokens
the processor realised for this sample, at the run's pixel bounds where the family has them),
num_text, and from the routing trace of its batch: visual_per_layer and avg_T (a routed run keeps
its keep ratios' fractions of this sample's own num_visual).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import reroute
from reroute.backbones import EvalProtocol
from reroute.config import RoutingConfig
from reroute.budgets.cost import decoder_dims
from reroute.eval.families import Family, generate, move_to
from reroute.eval.records import Appender, read_records, write_atomically
from reroute.eval.setup import pixel_bounds, with_pixel_bounds
from reroute.eval.shard import Shard
from reroute.eval.summary import format_summary, json_safe, summarize, versions
from reroute.eval.task import EvalSample, Task

REC_FRAMES: tuple[str, ...] = ("original", "resized")


@dataclass(frozen=True)
class EvalRun:
    """What one run evaluates: a model under one routing choice (tasks are passed per call).

    name: the run's folder name under the output directory.
    config: the routing config; None is vanilla.
    model_id: the hub id or directory the model came from (recorded in summaries).
    family: the model family (`reroute.eval.task.model_families`).
    rec_frame: "original" (the paper's convention: REC answers read in the original image's
        frame) or "resized" (Qwen2.5-VL: in the frame the processor resized the image to).
    batch_size: samples per generate() call.
    labels: free-form descriptors kept in the summary (method, tier, ratios, ...).
    min_pixels, max_pixels: the processor's pixel bounds where the family has them (Qwen-VL);
        None keeps the family's default, the paper's (`reroute.eval.setup.with_pixel_bounds`).
    clip: the CLIP checkpoint of ``instruction_encoder`` (recorded, part of the run's identity).
    instruction_encoder: `reroute.apply`'s, for a CDPruner config as published
        (`reroute.eval.setup.instruction_encoder`); None otherwise.
    """

    name: str
    config: RoutingConfig | None
    model_id: str
    family: str
    rec_frame: str = "original"
    batch_size: int = 8
    labels: dict[str, Any] = field(default_factory=dict)
    min_pixels: int | None = None
    max_pixels: int | None = None
    clip: str | None = None
    instruction_encoder: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"run name {self.name!r} is not a folder name: use letters, digits, '-', '_' or '.'")
        if self.rec_frame not in REC_FRAMES:
            raise ValueError(f"rec_frame must be one of {', '.join(REC_FRAMES)}, got {self.rec_frame!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if (self.clip is None) != (self.instruction_encoder is None):
            raise ValueError("clip names the instruction_encoder's checkpoint: give both or neither")
        Family(self.family)  # validates the name
        self.protocol()  # validates the pixel bounds

    def protocol(self) -> EvalProtocol:
        """The family's evaluation protocol with this run's pixel bounds."""
        names = ("min_pixels", "max_pixels")
        return with_pixel_bounds(Family(self.family).protocol, self.min_pixels, self.max_pixels, names)

    def identity(self) -> dict[str, Any]:
        """What must not change between a run and its resumption (written to run.json); the
        processor's pixel bounds where the family has them."""
        identity = {
            "model": self.model_id,
            "family": self.family,
            "rec_frame": self.rec_frame,
            "config": config_dict(self.config),
            # the harness, prompts, box format and parser the headline metrics follow (docs/evaluation.md)
            "protocol": Family(self.family).protocol.describe(),
        }
        bounds = pixel_bounds(self.protocol())
        if bounds is not None:
            identity["min_pixels"], identity["max_pixels"] = bounds
        if self.clip is not None:
            identity["clip"] = self.clip
        return identity


def config_dict(config: RoutingConfig | None) -> dict[str, Any] | None:
    """A RoutingConfig as plain JSON data (None for vanilla)."""
    if config is None:
        return None
    return config.to_dict()


def partial_path(run_dir: Path, task: str, rank: int) -> Path:
    return run_dir / f"{task}.rank{rank}.jsonl"


def _known_records(run_dir: Path, task: str) -> dict[str, dict[str, Any]]:
    """Every record this process can see for ``task``: the final file, then every rank's partial file."""
    known: dict[str, dict[str, Any]] = {}
    paths = [run_dir / f"{task}.jsonl", *sorted(run_dir.glob(f"{task}.rank*.jsonl"))]
    for path in paths:
        for record in read_records(path):
            known.setdefault(str(record["id"]), record)
    return known


def _visual_counts(model: Any, input_ids: torch.Tensor) -> list[int]:
    from reroute.backbones import backbone_for

    return backbone_for(model).visual_mask(model.config, input_ids).sum(dim=1).tolist()


@torch.no_grad()
def _run_batch(
    model: Any,
    processor: Any,
    task: Task,
    family: Family,
    run: EvalRun,
    handle: Any,
    batch: Sequence[EvalSample],
    num_layers: int,
) -> list[dict[str, Any]]:
    images = [sample.load_images() for sample in batch]
    prompts = [family.prompt(processor, task.prompt(sample, family.name), len(imgs)) for sample, imgs in zip(batch, images)]
    encoded = run.protocol().encode(processor, prompts, images)
    inputs = move_to(encoded.inputs, model.device, model.dtype)
    answers = generate(model, processor, inputs, task.max_new_tokens())
    num_visual = _visual_counts(model, inputs["input_ids"])
    num_tokens = inputs["attention_mask"].sum(dim=1).tolist()
    trace = handle.trace if handle is not None else None
    records = []
    for b, (sample, prompt, answer) in enumerate(zip(batch, prompts, answers)):
        if trace is not None and trace.samples[b].routed:
            per_layer = list(trace.samples[b].visual_per_layer)
        else:
            per_layer = [num_visual[b]] * num_layers
        frame = encoded.frames[b] if run.rec_frame == "resized" else None
        records.append(
            {
                "id": sample.id,
                "prompt": prompt,
                "answer": answer,
                "prediction": task.parse(sample, answer, family.name, frame),
                "target": sample.target,
                "meta": sample.meta,
                "frame": list(frame) if frame is not None else None,
                "num_visual": int(num_visual[b]),
                "num_text": int(num_tokens[b]) - int(num_visual[b]),
                "visual_per_layer": per_layer,
                "avg_T": sum(per_layer) / len(per_layer),
            }
        )
    return records


def evaluate_task(
    model: Any,
    processor: Any,
    task: Task,
    samples: Sequence[EvalSample],
    run: EvalRun,
    run_dir: str | Path,
    *,
    shard: Shard | None = None,
    progress: bool = True,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]] | None:
    """Evaluate ``samples`` of ``task``; returns every record in sample order (on rank 0; None elsewhere).

    Samples whose id is already in ``<run_dir>/<task>.jsonl`` (or a rank's partial file) are
    skipped. ``on_record`` is called after each record is on disk (tests use it to interrupt).
    """
    shard = shard or Shard()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    family = Family(run.family)
    ids = [sample.id for sample in samples]
    if len(set(ids)) != len(ids):
        raise ValueError(f"task {task.name} has duplicate sample ids; ids must be unique (they are the resume key)")

    # Every rank learns every record any rank can see (no shared file system assumed).
    local = _known_records(run_dir, task.name)
    known: dict[str, dict[str, Any]] = {}
    for records in shard.all_gather(local):
        for key, record in records.items():
            known.setdefault(key, record)
    mine = [sample for sample in shard.take(samples) if sample.id not in known]
    num_layers = decoder_dims(model).num_layers

    handle = None
    if run.config is not None:
        handle = reroute.apply(model, run.config, instruction_encoder=run.instruction_encoder)
    new: list[dict[str, Any]] = []
    total = len(shard.take(samples))
    bar = tqdm(total=total, initial=total - len(mine), desc=f"{run.name} {task.name}", unit="sample",
               disable=not (progress and shard.is_main))
    path = run_dir / f"{task.name}.jsonl" if shard.world == 1 else partial_path(run_dir, task.name, shard.rank)
    try:
        with Appender(path) as out:
            for start in range(0, len(mine), run.batch_size):
                batch = mine[start : start + run.batch_size]
                for record in _run_batch(model, processor, task, family, run, handle, batch, num_layers):
                    out.write(record)
                    new.append(record)
                    bar.update(1)
                    if on_record is not None:
                        on_record(record)
    finally:
        bar.close()
        if handle is not None:
            handle.restore()

    for records in shard.all_gather(new):
        for record in records:
            known.setdefault(str(record["id"]), record)
    result = None
    if shard.is_main:
        ordered = [known[sample_id] for sample_id in ids]
        id_set = set(ids)
        extra = [record for key, record in known.items() if key not in id_set]  # from an earlier, larger run
        final = run_dir / f"{task.name}.jsonl"
        write_atomically(final, ordered + extra)
        for partial in run_dir.glob(f"{task.name}.rank*.jsonl"):
            partial.unlink()
        result = ordered
    shard.barrier()  # the final file exists before any rank removes its partial file
    partial_path(run_dir, task.name, shard.rank).unlink(missing_ok=True)
    if result is not None:
        return read_records(run_dir / f"{task.name}.jsonl")[: len(ids)]
    return None


# ---------------------------------------------------------------------------------- whole runs


def run_summary(run: EvalRun, task_summaries: dict[str, dict[str, Any]], num_layers: int) -> dict[str, Any]:
    """The run's summary.json: identity, versions and every task's summary."""
    return {
        "run": run.name,
        **run.identity(),
        "labels": run.labels,
        "num_layers": num_layers,
        "versions": versions(),
        "tasks": task_summaries,
    }


def check_run_dir(run: EvalRun, run_dir: Path) -> None:
    """Refuse to resume a folder that holds another configuration's records (one-line error)."""
    path = run_dir / "run.json"
    if not path.exists():
        return
    previous = json.loads(path.read_text())
    if previous != run.identity():
        identity = run.identity()
        changed = ", ".join(k for k in dict.fromkeys([*identity, *previous]) if previous.get(k) != identity.get(k))
        raise ValueError(
            f"{run_dir} holds a run with another {changed}; use another --output or --run-name, or delete the folder"
        )


def evaluate(
    model: Any,
    processor: Any,
    tasks: Sequence[tuple[Task, Sequence[EvalSample]]],
    run: EvalRun,
    output: str | Path,
    *,
    shard: Shard | None = None,
    progress: bool = True,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any] | None:
    """Evaluate every (task, samples) pair; write ``output/<run>/<task>.jsonl``, summary.json, summary.md.

    Returns the run's summary on rank 0 (None on other ranks). Tasks summarised earlier in the
    same folder and not run now are kept in the summary.
    """
    shard = shard or Shard()
    run_dir = Path(output) / run.name
    check_run_dir(run, run_dir)
    shard.barrier()  # every rank has checked run.json before rank 0 (re)writes it
    if shard.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "run.json").write_text(json.dumps(run.identity(), indent=2) + "\n")
    summaries: dict[str, dict[str, Any]] = {}
    for task, samples in tasks:
        records = evaluate_task(model, processor, task, samples, run, run_dir, shard=shard, progress=progress,
                                on_record=on_record)
        if records is not None:
            summaries[task.name] = summarize(task, records, model)
    if not shard.is_main:
        return None
    previous_path = run_dir / "summary.json"
    previous = json.loads(previous_path.read_text())["tasks"] if previous_path.exists() else {}
    merged = {**{k: v for k, v in previous.items() if k not in summaries}, **summaries}
    summary = json_safe(run_summary(run, merged, decoder_dims(model).num_layers))
    previous_path.write_text(json.dumps(summary, indent=2) + "\n")
    (run_dir / "summary.md").write_text(format_summary(summary))
    return summary
