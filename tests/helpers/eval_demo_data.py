"""The bundled demo model's own held-out grounding samples, written as a RefCOCO-layout split.

`reroute demo` evaluates `reroute.demo.synthetic.make_dataset(n, seed=2026, split="test")`;
its grounding samples become RefCOCO rows (image, ``[x, y, w, h]`` pixel box, one referring
expression), so `reroute eval --tasks refcoco_val` and the demo's own evaluation can be
compared on the same samples. The box written is the demo's target (``Sample.box``, the
normalised box rounded to 2 decimals, which the model was trained to answer) times the
image size, so both evaluations score against the same ground truth.
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers.eval_fixtures import write_refcoco_rows

from reroute.demo import synthetic
from reroute.demo.run import EVAL_SEED, EVAL_SPLIT


def demo_grounding_samples(n: int) -> list[synthetic.Sample]:
    """The first ``n`` grounding samples of the demo's held-out evaluation stream."""
    out: list[synthetic.Sample] = []
    start = 0
    while len(out) < n:
        batch = synthetic.make_dataset(4 * n, seed=EVAL_SEED, split=EVAL_SPLIT, start=start)
        out += [s for s in batch if s.kind == "grounding"]
        start += 4 * n
    return out[:n]


def write_demo_refcoco(data_dir: str | Path, n: int) -> list[synthetic.Sample]:
    """Write the first ``n`` demo grounding samples as RefCOCO ``val``; returns the samples (row order = sample order)."""
    samples = demo_grounding_samples(n)
    size = synthetic.IMAGE_SIZE
    rows = []
    for s in samples:
        x1, y1, x2, y2 = s.box
        rows.append((s.image, [x1 * size, y1 * size, (x2 - x1) * size, (y2 - y1) * size], [s.expression]))
    write_refcoco_rows(data_dir, rows, split="val", n_shards=2, id_prefix="val-")
    return samples
