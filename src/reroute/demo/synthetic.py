"""Synthetic scenes of simple shapes, with referring-expression grounding and VQA questions.

Every sample is a pure function of ``(seed, split, index)``: a scene of 2-5 non-overlapping
objects (shape, colour, size, position) drawn with PIL on a plain dark background, plus one
question and its answer.

Grounding questions ask for the box of a referring expression. Expressions are *simple*
("the red circle", "the triangle", "the blue shape"), *spatial relations* ("the circle left of
the red square", "the shape below the green triangle": find the anchor first, then the target)
or *superlatives* ("the largest blue shape"). Every expression is checked to be unambiguous
(exactly one object satisfies it). Boxes are answered the way LLaVA-1.5 answers RefCOCO:
normalized ``[x1, y1, x2, y2]`` with two decimals.

VQA questions (existence, colour, shape, count) have one-word answers.

Objects sit on the vision tower's patch grid (``CELL`` pixels per cell), so every box
coordinate is a multiple of ``CELL / IMAGE_SIZE``. In the default "slots" layout each object
occupies the top-left corner of one slot of a 3 x 3 board; "grid" places objects on any cell.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

IMAGE_SIZE = 96  # pixels (square)
CELL = 8  # pixels per grid cell == the vision tower's patch size
GRID = IMAGE_SIZE // CELL  # 12 cells per side
SIZES = (2, 3, 4)  # object side, in cells
MIN_OBJECTS, MAX_OBJECTS = 2, 5
BACKGROUND = (24, 24, 24)

OBJECT_SHAPES = ("circle", "square", "triangle", "diamond")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (60, 110, 255),
    "yellow": (245, 230, 40),
    "purple": (175, 70, 230),
    "white": (245, 245, 245),
}
RELATIONS = ("left of", "right of", "above", "below")
SUPERLATIVES = ("largest", "smallest")
NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5"}

GROUNDING_PREFIX = "Provide the bounding box of:"
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

# Mixture (probabilities) used by make_sample.
P_GROUNDING = 0.6
GROUNDING_MIX = {"simple": 0.45, "relation": 0.4, "superlative": 0.15}
VQA_MIX = {"exist": 0.25, "color": 0.25, "shape": 0.2, "count": 0.3}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: int  # side in cells
    x: int  # left column (cells)
    y: int  # top row (cells)

    @property
    def cell_box(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.x + self.size, self.y + self.size)

    @property
    def pixel_box(self) -> tuple[int, int, int, int]:
        return tuple(v * CELL for v in self.cell_box)  # type: ignore[return-value]

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Normalized [x1, y1, x2, y2], rounded to 2 decimals (what the model must answer)."""
        return tuple(round(v / IMAGE_SIZE, 2) for v in self.pixel_box)  # type: ignore[return-value]


@dataclass
class Sample:
    image: Image.Image
    question: str
    answer: str
    kind: str  # "grounding" or "vqa"
    subtype: str  # simple / relation / superlative / exist / color / shape / count
    objects: list[SceneObject]
    box: tuple[float, float, float, float] | None = None  # grounding target (normalized)
    target: int | None = None  # index of the referred object in `objects`, if any
    expression: str | None = None  # the referring expression, if any
    meta: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- scenes


LAYOUTS = ("grid", "slots")
# The bundled model is trained on "slots" (coarser boxes: a small model learns them on 2 CPU cores
# in an hour); "grid" (any cell, sizes 2-4) is the harder variant.
DEFAULT_LAYOUT = "slots"
SLOT = 4  # cells per slot side in the "slots" layout (a 3 x 3 board of slots)
SLOT_SIZES = (2, 3)


def random_scene(
    rng: random.Random, min_objects: int = MIN_OBJECTS, max_objects: int = MAX_OBJECTS, layout: str | None = None
) -> list[SceneObject]:
    """2-5 (by default) non-overlapping objects, at least one free cell between any two of them.

    ``layout="grid"``: any cell position, sizes 2-4 cells. ``layout="slots"``: one object per
    slot of a 3 x 3 board, at the slot's top-left corner, sizes 2-3 cells (coarser boxes).
    """
    layout = layout or DEFAULT_LAYOUT
    if layout == "slots":
        n = rng.randint(min_objects, max_objects)
        slots = rng.sample(range((GRID // SLOT) ** 2), n)
        return [
            SceneObject(rng.choice(OBJECT_SHAPES), rng.choice(list(COLORS)), rng.choice(SLOT_SIZES), (k % 3) * SLOT, (k // 3) * SLOT)
            for k in slots
        ]
    if layout != "grid":
        raise ValueError(f"layout must be one of {LAYOUTS}")
    while True:
        n = rng.randint(min_objects, max_objects)
        objects: list[SceneObject] = []
        for _ in range(n):
            for _attempt in range(50):
                size = rng.choice(SIZES)
                x, y = rng.randint(0, GRID - size), rng.randint(0, GRID - size)
                if all(
                    x + size + 1 <= o.x or o.x + o.size + 1 <= x or y + size + 1 <= o.y or o.y + o.size + 1 <= y
                    for o in objects
                ):
                    objects.append(SceneObject(rng.choice(OBJECT_SHAPES), rng.choice(list(COLORS)), size, x, y))
                    break
        if len(objects) == n:
            return objects


def render(objects: Sequence[SceneObject]) -> Image.Image:
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in objects:
        x0, y0, x1, y1 = o.pixel_box
        x1, y1 = x1 - 1, y1 - 1  # inclusive pixel coordinates
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        fill = COLORS[o.color]
        if o.shape == "square":
            draw.rectangle([x0, y0, x1, y1], fill=fill)
        elif o.shape == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(x0, y1), (x1, y1), (cx, y0)], fill=fill)
        elif o.shape == "diamond":
            draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
        else:  # pragma: no cover
            raise ValueError(o.shape)
    return img


# ----------------------------------------------------------------------------- semantics


def relation_holds(target: SceneObject, relation: str, anchor: SceneObject) -> bool:
    """Boxes entirely on one side: 'left of' means target's right edge <= anchor's left edge."""
    tx0, ty0, tx1, ty1 = target.cell_box
    ax0, ay0, ax1, ay1 = anchor.cell_box
    if relation == "left of":
        return tx1 <= ax0
    if relation == "right of":
        return tx0 >= ax1
    if relation == "above":
        return ty1 <= ay0
    if relation == "below":
        return ty0 >= ay1
    raise ValueError(relation)


# A descriptor is (colour or None, shape or None): "shape", "circle", "red shape", "red circle".
Descriptor = tuple[str | None, str | None]


def matches(obj: SceneObject, desc: Descriptor) -> bool:
    color, shape = desc
    return (color is None or obj.color == color) and (shape is None or obj.shape == shape)


def describe(desc: Descriptor, plural: bool = False) -> str:
    color, shape = desc
    noun = shape or "shape"
    if plural:
        noun += "s"
    return f"{color} {noun}" if color else noun


def descriptors_of(obj: SceneObject) -> list[Descriptor]:
    return [(None, None), (None, obj.shape), (obj.color, None), (obj.color, obj.shape)]


def referents(objects: Sequence[SceneObject], expr: dict) -> list[int]:
    """Indices of the objects satisfying a structured expression (the generator's semantics)."""
    kind = expr["type"]
    if kind == "simple":
        return [i for i, o in enumerate(objects) if matches(o, expr["desc"])]
    if kind == "relation":
        anchors = referents(objects, expr["anchor"])
        assert len(anchors) == 1
        a = objects[anchors[0]]
        return [
            i
            for i, o in enumerate(objects)
            if i != anchors[0] and matches(o, expr["desc"]) and relation_holds(o, expr["relation"], a)
        ]
    if kind == "superlative":
        cands = [i for i, o in enumerate(objects) if matches(o, expr["desc"])]
        if not cands:
            return []
        key = (max if expr["which"] == "largest" else min)(objects[i].size for i in cands)
        return [i for i in cands if objects[i].size == key]
    raise ValueError(kind)


def expression_text(expr: dict) -> str:
    if expr["type"] == "simple":
        return "the " + describe(expr["desc"])
    if expr["type"] == "relation":
        return f"the {describe(expr['desc'])} {expr['relation']} {expression_text(expr['anchor'])}"
    if expr["type"] == "superlative":
        return f"the {expr['which']} {describe(expr['desc'])}"
    raise ValueError(expr["type"])


def _simple_expressions(objects: Sequence[SceneObject], i: int, allow=lambda d: True) -> list[dict]:
    out = []
    for d in descriptors_of(objects[i]):
        e = {"type": "simple", "desc": d}
        if allow(d) and referents(objects, e) == [i]:
            out.append(e)
    return out


def _relation_expressions(objects: Sequence[SceneObject], i: int, allow=lambda d: True) -> list[dict]:
    """Relational expressions for object i whose descriptor alone is ambiguous (two hops needed)."""
    out = []
    for j in range(len(objects)):
        if j == i:
            continue
        anchor_exprs = _simple_expressions(objects, j)
        if not anchor_exprs:
            continue
        for rel in RELATIONS:
            if not relation_holds(objects[i], rel, objects[j]):
                continue
            for d in descriptors_of(objects[i]):
                if not allow(d) or len(referents(objects, {"type": "simple", "desc": d})) < 2:
                    continue
                for a in anchor_exprs:
                    e = {"type": "relation", "desc": d, "relation": rel, "anchor": a}
                    if referents(objects, e) == [i]:
                        out.append(e)
    return out


def _superlative_expressions(objects: Sequence[SceneObject], i: int, allow=lambda d: True) -> list[dict]:
    out = []
    for d in descriptors_of(objects[i]):
        if not allow(d) or len(referents(objects, {"type": "simple", "desc": d})) < 2:
            continue
        for which in SUPERLATIVES:
            e = {"type": "superlative", "desc": d, "which": which}
            if referents(objects, e) == [i]:
                out.append(e)
    return out


_EXPRESSION_MAKERS: dict[str, Callable] = {
    "simple": _simple_expressions,
    "relation": _relation_expressions,
    "superlative": _superlative_expressions,
}


def format_box(box: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in box) + "]"


# ----------------------------------------------------------------------------- samples


def _choose(rng: random.Random, mix: dict[str, float]) -> str:
    r, acc = rng.random(), 0.0
    for k, p in mix.items():
        acc += p
        if r < acc:
            return k
    return k


def _try_grounding(rng: random.Random, objects: list[SceneObject], subtype: str) -> Sample | None:
    order = list(range(len(objects)))
    rng.shuffle(order)
    for i in order:
        exprs = _EXPRESSION_MAKERS[subtype](objects, i)
        if exprs:
            expr = rng.choice(exprs)
            assert referents(objects, expr) == [i], "ambiguous referring expression"
            text = expression_text(expr)
            box = objects[i].box
            return Sample(
                image=render(objects),
                question=f"{GROUNDING_PREFIX} {text}.",
                answer=format_box(box),
                kind="grounding",
                subtype=subtype,
                objects=objects,
                box=box,
                target=i,
                expression=text,
                meta={"expr": expr},
            )
    return None


def _try_vqa(rng: random.Random, objects: list[SceneObject], subtype: str) -> Sample | None:
    def sample(question: str, answer: str, target: int | None = None, expr: dict | None = None) -> Sample:
        return Sample(
            image=render(objects),
            question=question,
            answer=answer,
            kind="vqa",
            subtype=subtype,
            objects=objects,
            target=target,
            expression=expression_text(expr) if expr else None,
            meta={"expr": expr} if expr else {},
        )

    if subtype == "exist":
        want = rng.random() < 0.5
        present = {(o.color, o.shape) for o in objects}
        pool = [(c, s) for c in COLORS for s in OBJECT_SHAPES if ((c, s) in present) == want]
        c, s = rng.choice(pool)
        return sample(f"Is there a {c} {s}?", "yes" if want else "no")
    if subtype == "count":
        desc = rng.choice(
            [(None, rng.choice(OBJECT_SHAPES)), (rng.choice(list(COLORS)), None), (None, None)]
            + [(o.color, None) for o in objects]
            + [(None, o.shape) for o in objects]
        )
        n = sum(matches(o, desc) for o in objects)
        return sample(f"How many {describe(desc, plural=True)} are there?", str(n))
    # colour / shape of a uniquely referred object (simple or relational, never naming the asked attribute)
    if subtype == "color":
        allow = lambda d: d[0] is None  # noqa: E731
    elif subtype == "shape":
        allow = lambda d: d[1] is None  # noqa: E731
    else:  # pragma: no cover
        raise ValueError(subtype)
    kind = "relation" if rng.random() < 0.4 else "simple"
    order = list(range(len(objects)))
    rng.shuffle(order)
    for maker in (kind, "simple"):
        for i in order:
            exprs = _EXPRESSION_MAKERS[maker](objects, i, allow)
            if exprs:
                expr = rng.choice(exprs)
                assert referents(objects, expr) == [i], "ambiguous referring expression"
                text = expression_text(expr)
                if subtype == "color":
                    return sample(f"What color is {text}?", objects[i].color, i, expr)
                return sample(f"What shape is {text}?", objects[i].shape, i, expr)
    return None


def make_sample(seed: int, split: str = "train", index: int = 0, kind: str | None = None, layout: str | None = None) -> Sample:
    """Sample ``index`` of ``split`` for ``seed``: a pure function of its arguments."""
    rng = random.Random(f"reroute-demo/{seed}/{split}/{index}")
    if kind is None:
        kind = "grounding" if rng.random() < P_GROUNDING else "vqa"
    subtype = _choose(rng, GROUNDING_MIX if kind == "grounding" else VQA_MIX)
    while True:
        objects = random_scene(rng, layout=layout)
        s = (_try_grounding if kind == "grounding" else _try_vqa)(rng, objects, subtype)
        if s is not None:
            s.meta.update(seed=seed, split=split, index=index)
            return s


def make_conversation(
    seed: int,
    split: str = "train",
    index: int = 0,
    turns: int = 4,
    min_objects: int = MIN_OBJECTS,
    max_objects: int = MAX_OBJECTS,
    layout: str | None = None,
) -> list[Sample]:
    """``turns`` questions about one scene (a LLaVA-style multi-turn conversation, for training).

    A pure function of its arguments; its stream is disjoint from ``make_sample``'s. The trainer
    starts with easier scenes (``min_objects=1``, fewer ``max_objects``): a curriculum.
    """
    rng = random.Random(f"reroute-demo/conv/{seed}/{split}/{index}")
    objects = random_scene(rng, min_objects, max_objects, layout)
    out: list[Sample] = []
    while len(out) < turns:
        kind = "grounding" if rng.random() < P_GROUNDING else "vqa"
        subtype = _choose(rng, GROUNDING_MIX if kind == "grounding" else VQA_MIX)
        s = (_try_grounding if kind == "grounding" else _try_vqa)(rng, objects, subtype)
        if s is not None and all(s.question != o.question for o in out):
            s.meta.update(seed=seed, split=split, index=index, turn=len(out))
            out.append(s)
    return out


def make_dataset(
    n: int, seed: int = 0, split: str = "test", start: int = 0, kind: str | None = None, layout: str | None = None
) -> list[Sample]:
    """``n`` samples (indices ``start .. start+n-1``) of ``split``; different splits never share a stream."""
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}")
    return [make_sample(seed, split, start + i, kind, layout) for i in range(n)]


# ----------------------------------------------------------------------------- scoring

_NUM = r"[-+]?\d*\.?\d+"
_BOX_RE = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    """The first ``[x1, y1, x2, y2]`` in ``text`` (spaces anywhere), or None."""
    m = _BOX_RE.search(text or "")
    if not m:
        return None
    return tuple(float(v) for v in m.groups())  # type: ignore[return-value]


def iou(box_a: Sequence[float] | None, box_b: Sequence[float] | None) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes (0 for None or degenerate boxes)."""
    if box_a is None or box_b is None:
        return 0.0
    ax0, ay0, ax1, ay1 = box_a
    bx0, by0, bx1, by1 = box_b
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = max(0.0, ax1 - ax0) * max(0.0, ay1 - ay0) + max(0.0, bx1 - bx0) * max(0.0, by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def normalize_answer(text: str) -> str:
    """Lower-case, drop the end-of-sequence marker and punctuation, map number words to digits."""
    t = (text or "").replace("</s>", " ").lower()
    t = re.sub(r"[^\w\s]", " ", t)
    words = t.split()
    if not words:
        return ""
    t = " ".join(words)
    return NUMBER_WORDS.get(t, t)


def vqa_correct(prediction: str, answer: str) -> bool:
    """Exact match after normalisation."""
    return normalize_answer(prediction) == normalize_answer(answer)


def grounding_correct(prediction: str, box: Sequence[float], threshold: float = 0.5) -> bool:
    return iou(parse_box(prediction), box) >= threshold


# ----------------------------------------------------------------------------- vocabulary


def vocabulary() -> list[str]:
    """Every word/punctuation token the task's prompts and answers can contain (no special tokens)."""
    words = set(
        "USER ASSISTANT : ? . , [ ] Provide the bounding box of What color is shape Is there a How many are "
        "yes no".split()
    )
    words.update(GROUNDING_PREFIX.replace(":", " : ").split())
    words.update(OBJECT_SHAPES)
    words.update(s + "s" for s in OBJECT_SHAPES)
    words.update(["shapes"])
    words.update(COLORS)
    words.update(SUPERLATIVES)
    for r in RELATIONS:
        words.update(r.split())
    words.update(str(i) for i in range(10))
    words.update(f"{i / 100:.2f}" for i in range(101))
    return sorted(words)
