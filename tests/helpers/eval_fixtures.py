"""Small benchmark datasets written in the real on-disk layouts, for offline tests.

Every writer puts a few rows of one benchmark split into ``data_dir`` exactly as the Hugging
Face hub stores them: parquet shards named ``<split>-NNNNN-of-NNNNN.parquet`` in the
dataset's config folder, written through ``datasets`` so that the schema metadata and the
``Image`` feature (a ``{"bytes", "path"}`` struct) are those of the real files. ``layout``
chooses where the dataset's repository lands under ``data_dir``:

- ``"org"`` (default): ``<data_dir>/<org>/<Name>/...`` (``hf download --local-dir <data_dir>/<org>/<Name>``);
- ``"snapshot"``: ``<data_dir>/<Name>/...`` (a bare local copy of the repository);
- ``"hf_cache"``: ``<data_dir>/datasets--<org>--<Name>/snapshots/<rev>/...``, files being
  symlinks into ``../../blobs`` as in the hub cache.

Writers: `write_refcoco` (RefCOCO / RefCOCO+ / RefCOCOg, any split), `write_refcoco_rows`
(a RefCOCO-layout split from given ``(image, bbox_xywh, expressions)`` rows), `write_pope`,
`write_gqa` (both test-dev configs), `write_mme`, `write_mmbench` (``en`` dev with circular
copies); `write_split` writes any rows with given features.

Each writer returns the rows it wrote (dicts with the dataset's columns; images as PIL), so a
test can compute what a loader must produce. Images are small, deterministic and distinct.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

LAYOUTS = ("org", "snapshot", "hf_cache")
DEFAULT_ORG = "lmms-lab"
#: the revision folder name used by the "hf_cache" layout
CACHE_REVISION = "0123456789abcdef0123456789abcdef01234567"
#: rows per parquet row group in the fixtures (the hub uses ~100 for image datasets)
ROW_GROUP_SIZE = 2


# ----------------------------------------------------------------------------- layout


def repo_root(data_dir: str | Path, name: str, layout: str = "org", org: str = DEFAULT_ORG) -> Path:
    """The folder that holds the dataset repository ``<org>/<name>`` in ``layout``."""
    data_dir = Path(data_dir)
    if layout == "org":
        return data_dir / org / name
    if layout == "snapshot":
        return data_dir / name
    if layout == "hf_cache":
        return data_dir / f"datasets--{org}--{name}" / "snapshots" / CACHE_REVISION
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def _place(root: Path, relative: str, payload: bytes, layout: str) -> Path:
    """Write ``payload`` at ``root/relative``; in the hub cache, as a symlink to a blob."""
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if layout == "hf_cache":
        blobs = root.parent.parent / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        blob = blobs / hashlib.sha256(payload).hexdigest()
        blob.write_bytes(payload)
        (root.parent.parent / "refs").mkdir(exist_ok=True)
        (root.parent.parent / "refs" / "main").write_text(CACHE_REVISION)
        if target.exists() or target.is_symlink():
            target.unlink()
        target.symlink_to(os.path.relpath(blob, target.parent))
    else:
        target.write_bytes(payload)
    return target


def write_split(
    data_dir: str | Path,
    name: str,
    config_dir: str,
    split: str,
    rows: Sequence[dict[str, Any]],
    features: datasets.Features,
    layout: str = "org",
    org: str = DEFAULT_ORG,
    n_shards: int = 1,
) -> list[Path]:
    """Write ``rows`` as ``<config_dir>/<split>-0000i-of-0000n.parquet`` shards of repository ``org/name``.

    Rows are split into ``n_shards`` contiguous shards (at least one row each). Returns the
    shard paths in order.
    """
    if not rows:
        raise ValueError("a split needs at least one row")
    n_shards = max(1, min(n_shards, len(rows)))
    root = repo_root(data_dir, name, layout, org)
    bounds = [round(i * len(rows) / n_shards) for i in range(n_shards + 1)]
    paths = []
    for i in range(n_shards):
        chunk = list(rows[bounds[i] : bounds[i + 1]])
        # The Arrow table of a `datasets.Dataset` carries the "huggingface" schema metadata the
        # hub files have; small row groups exercise readers that fetch one group at a time.
        table = datasets.Dataset.from_list(chunk, features=features).data.table
        buffer = io.BytesIO()
        pq.write_table(table, buffer, row_group_size=ROW_GROUP_SIZE)
        relative = f"{config_dir}/{split}-{i:05d}-of-{n_shards:05d}.parquet"
        paths.append(_place(root, relative, buffer.getvalue(), layout))
    return paths


def fixture_image(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A small RGB picture that differs for every ``seed`` (a coloured rectangle on a tinted background)."""
    w, h = size
    background = ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256)
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    x0, y0 = seed % max(1, w // 2), (seed * 7) % max(1, h // 2)
    draw.rectangle([x0, y0, x0 + w // 3, y0 + h // 3], fill=(255 - background[0], 255 - background[1], 255 - background[2]))
    return image


def image_value(image: Image.Image, path: str) -> dict[str, Any]:
    """``image`` as the hub files store it: PNG bytes plus the original file name."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": path}


def with_images_decoded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The written rows as a test compares them: each ``image`` value decoded back to a PIL image."""
    return [dict(r, image=Image.open(io.BytesIO(r["image"]["bytes"]))) for r in rows]


# ----------------------------------------------------------------------------- RefCOCO / RefCOCO+ / RefCOCOg

REFCOCO_FEATURES = datasets.Features(
    {
        "question_id": datasets.Value("string"),
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "answer": datasets.List(datasets.Value("string")),
        "segmentation": datasets.List(datasets.Value("float32")),
        "bbox": datasets.List(datasets.Value("float32")),
        "iscrowd": datasets.Value("int8"),
        "file_name": datasets.Value("string"),
    }
)
#: the captioning question the lmms-lab REC files carry in ``question`` (REC ignores it)
REFCOCO_QUESTION = "Please carefully observe the area circled in the image and come up with a caption for the area."


def write_refcoco_rows(
    data_dir: str | Path,
    rows: Sequence[tuple[Image.Image, Sequence[float], Sequence[str]]],
    split: str = "val",
    name: str = "RefCOCO",
    layout: str = "org",
    org: str = DEFAULT_ORG,
    n_shards: int = 1,
    id_prefix: str = "",
) -> list[dict[str, Any]]:
    """Write one RefCOCO-layout split from ``(image, bbox_xywh, expressions)`` rows.

    One row per object, as in lmms-lab/RefCOCO: ``bbox`` is ``[x, y, w, h]`` in pixels of
    ``image``, ``answer`` the list of referring expressions (each becomes one sample).
    ``question_id`` is ``f"{id_prefix}{i}"``. ``name`` is the repository name (``RefCOCO``,
    ``RefCOCOPlus`` / ``RefCOCOplus``, ``RefCOCOg``). Returns the rows written.
    """
    written = []
    for i, (image, bbox, expressions) in enumerate(rows):
        x, y, w, h = (float(v) for v in bbox)
        written.append(
            {
                "question_id": f"{id_prefix}{i}",
                "image": image_value(image.convert("RGB"), f"COCO_train2014_{i:012d}.jpg"),
                "question": REFCOCO_QUESTION,
                "answer": [str(e) for e in expressions],
                "segmentation": [x, y, x + w, y, x + w, y + h, x, y + h],
                "bbox": [x, y, w, h],
                "iscrowd": 0,
                "file_name": f"COCO_train2014_{i:012d}.jpg",
            }
        )
    write_split(data_dir, name, "data", split, written, REFCOCO_FEATURES, layout, org, n_shards)
    return with_images_decoded(written)


def write_refcoco(
    data_dir: str | Path,
    split: str = "val",
    name: str = "RefCOCO",
    layout: str = "org",
    org: str = DEFAULT_ORG,
    n_objects: int = 4,
    n_shards: int = 2,
) -> list[dict[str, Any]]:
    """A small RefCOCO-layout split: ``n_objects`` rows with 1-3 expressions each.

    Images are 64 x 48 (non-square, so width/height mix-ups show); object ``i`` has bbox
    ``[4 + 2i, 3 + i, 20, 12]`` (xywh pixels) and ``1 + i % 3`` expressions
    ``"<split> object {i} phrase {k}"``. Expression counts sum to 1+2+3+1+... so a loader
    that forgets to explode is caught. Returns the rows written (see `write_refcoco_rows`).
    """
    rows = [
        (fixture_image(i), [4 + 2 * i, 3 + i, 20, 12], [f"{split} object {i} phrase {k}" for k in range(1 + i % 3)])
        for i in range(n_objects)
    ]
    return write_refcoco_rows(
        data_dir, rows, split=split, name=name, layout=layout, org=org, n_shards=n_shards, id_prefix=f"{split}-"
    )


# ----------------------------------------------------------------------------- POPE

POPE_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "question_id": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "image_source": datasets.Value("string"),
        "image": datasets.Image(),
        "category": datasets.Value("string"),
    }
)
POPE_CATEGORIES = ("adversarial", "popular", "random")
POPE_OBJECTS = ("dog", "car", "chair", "bottle")


def write_pope(
    data_dir: str | Path,
    layout: str = "org",
    org: str = DEFAULT_ORG,
    per_category: int = 4,
    n_shards: int = 2,
    name: str = "POPE",
) -> list[dict[str, Any]]:
    """A small lmms-lab/POPE ``test`` split: ``per_category`` questions in each of adversarial, popular, random.

    Question ``j`` of a category asks ``"Is there a {object} in the image?"``; answers
    alternate ``yes`` / ``no`` starting with ``yes`` (so each category is balanced when
    ``per_category`` is even). ``question_id`` is ``"1".."N"`` over the whole split, ``id`` a
    zero-padded string as in the hub files, and two questions share each image. Returns the
    rows written.
    """
    rows = []
    n = 0
    for category in POPE_CATEGORIES:
        for j in range(per_category):
            n += 1
            image_seed = 100 + (n - 1) // 2
            rows.append(
                {
                    "id": f"{n - 1:04d}",
                    "question_id": str(n),
                    "question": f"Is there a {POPE_OBJECTS[j % len(POPE_OBJECTS)]} in the image?",
                    "answer": "yes" if j % 2 == 0 else "no",
                    "image_source": f"COCO_val2014_{image_seed:012d}",
                    "image": image_value(fixture_image(image_seed), f"COCO_val2014_{image_seed:012d}.jpg"),
                    "category": category,
                }
            )
    write_split(data_dir, name, "data", "test", rows, POPE_FEATURES, layout, org, n_shards)
    return with_images_decoded(rows)


# ----------------------------------------------------------------------------- GQA

GQA_QUESTION_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "imageId": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "fullAnswer": datasets.Value("string"),
        "isBalanced": datasets.Value("bool"),
    }
)
GQA_IMAGE_FEATURES = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()})


def write_gqa(
    data_dir: str | Path,
    layout: str = "org",
    org: str = DEFAULT_ORG,
    n_images: int = 3,
    questions_per_image: int = 2,
    name: str = "GQA",
) -> list[dict[str, Any]]:
    """lmms-lab/GQA's two test-dev configs: ``testdev_balanced_instructions`` and ``testdev_balanced_images``.

    Image ``n{i}`` gets ``questions_per_image`` questions ``"What is in region {k} of image {i}?"``
    with answer ``"thing{i}{k}"``; question ids are ``"20{i}{k}"``. The images config lists the
    images in reverse order (so a join that assumes the same order is caught). Returns the
    question rows, each with an extra ``"image"`` key holding its PIL image.
    """
    questions, images = [], []
    for i in range(n_images):
        image = fixture_image(200 + i)
        images.append({"id": f"n{i}", "image": image_value(image, f"n{i}.jpg")})
        for k in range(questions_per_image):
            questions.append(
                {
                    "id": f"20{i}{k}",
                    "imageId": f"n{i}",
                    "question": f"What is in region {k} of image {i}?",
                    "answer": f"thing{i}{k}",
                    "fullAnswer": f"The region holds thing{i}{k}.",
                    "isBalanced": True,
                }
            )
    write_split(data_dir, name, "testdev_balanced_instructions", "testdev", questions, GQA_QUESTION_FEATURES, layout, org)
    write_split(data_dir, name, "testdev_balanced_images", "testdev", images[::-1], GQA_IMAGE_FEATURES, layout, org)
    by_id = {r["id"]: Image.open(io.BytesIO(r["image"]["bytes"])) for r in images}
    return [dict(q, image=by_id[q["imageId"]]) for q in questions]


# ----------------------------------------------------------------------------- MME

MME_FEATURES = datasets.Features(
    {
        "question_id": datasets.Value("string"),
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "category": datasets.Value("string"),
    }
)


def write_mme(
    data_dir: str | Path,
    categories: Sequence[str] = ("existence", "OCR", "code_reasoning"),
    images_per_category: int = 2,
    layout: str = "org",
    org: str = DEFAULT_ORG,
    n_shards: int = 2,
    name: str = "MME",
) -> list[dict[str, Any]]:
    """An lmms-lab/MME ``test`` split: two questions per image (answers "Yes" then "No").

    ``question_id`` is the image's file name ``"<category>/<j>.png"`` as in the hub files and
    each question ends with MME's " Please answer yes or no.". Returns the rows written.
    """
    rows = []
    for c, category in enumerate(categories):
        for j in range(images_per_category):
            image = image_value(fixture_image(300 + 10 * c + j), f"{category}/{j}.png")
            for answer in ("Yes", "No"):
                rows.append(
                    {
                        "question_id": f"{category}/{j}.png",
                        "image": image,
                        "question": f"Is this picture {j} of {category} {answer.lower()}-like? Please answer yes or no.",
                        "answer": answer,
                        "category": category,
                    }
                )
    write_split(data_dir, name, "data", "test", rows, MME_FEATURES, layout, org, n_shards)
    return with_images_decoded(rows)


# ----------------------------------------------------------------------------- MMBench

MMBENCH_FEATURES = datasets.Features(
    {
        "index": datasets.Value("int64"),
        "question": datasets.Value("string"),
        "hint": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "A": datasets.Value("string"),
        "B": datasets.Value("string"),
        "C": datasets.Value("string"),
        "D": datasets.Value("string"),
        "category": datasets.Value("string"),
        "image": datasets.Image(),
        "source": datasets.Value("string"),
        "L2-category": datasets.Value("string"),
        "comment": datasets.Value("string"),
        "split": datasets.Value("string"),
    }
)


def write_mmbench(
    data_dir: str | Path, n_questions: int = 3, layout: str = "org", org: str = DEFAULT_ORG, name: str = "MMBench"
) -> list[dict[str, Any]]:
    """lmms-lab/MMBench config ``en`` split ``dev`` with circular copies.

    Question ``q`` (index ``q``) has options ``"red {q}", "green {q}", "blue {q}"`` (``D`` is
    "nan", as in the files for three-option questions), answer ``A``; its rotated copies have
    index ``q + k * 1_000_000`` (k = 1, 2) with the options rotated and the answer letter
    following. Question 0 has a hint, the others ``None``. Categories alternate
    ``"color"``/``"shape"``. Returns the rows written.
    """
    rows = []
    for q in range(n_questions):
        options = [f"red {q}", f"green {q}", f"blue {q}"]
        image = image_value(fixture_image(400 + q), f"{q}.jpg")
        for k in range(3):
            rotated = options[k:] + options[:k]
            rows.append(
                {
                    "index": q + k * 1_000_000,
                    "question": f"Which colour is thing {q}?",
                    "hint": "Look at the top left." if q == 0 else None,
                    "answer": "ABC"[rotated.index(options[0])],
                    "A": rotated[0],
                    "B": rotated[1],
                    "C": rotated[2],
                    "D": "nan",
                    "category": ("color", "shape")[q % 2],
                    "image": image,
                    "source": "fixture",
                    "L2-category": "perception",
                    "comment": None,
                    "split": "dev",
                }
            )
    write_split(data_dir, name, "en", "dev", rows, MMBENCH_FEATURES, layout, org)
    return with_images_decoded(rows)
