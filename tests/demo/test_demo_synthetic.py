"""The synthetic grounding + VQA generator of the bundled demo model."""

from __future__ import annotations

import re

import numpy as np
import pytest

from reroute.demo import synthetic as syn

N = 300


@pytest.fixture(scope="module", params=syn.LAYOUTS)
def samples(request):
    return syn.make_dataset(N, seed=123, split="test", layout=request.param)


# ----------------------------------------------------------------- an independent reading of the questions

COLOR_WORDS = set(syn.COLORS)
SHAPE_WORDS = set(syn.OBJECT_SHAPES)


def parse_desc(words: list[str]):
    """'red circle' / 'circle' / 'red shape' / 'shape' (plural allowed) -> predicate on objects."""
    color = words[0] if words[0] in COLOR_WORDS else None
    noun = words[-1].removesuffix("s") if words[-1] not in SHAPE_WORDS and words[-1] != "shape" else words[-1]
    assert len(words) == (2 if color else 1), words
    assert noun in SHAPE_WORDS | {"shape"}, words
    shape = None if noun == "shape" else noun
    return lambda o: (color is None or o.color == color) and (shape is None or o.shape == shape)


def strictly(rel: str, t, a) -> bool:
    # re-implemented from pixel boxes: "left of" = the whole target lies left of the whole anchor
    tx0, ty0, tx1, ty1 = t.pixel_box
    ax0, ay0, ax1, ay1 = a.pixel_box
    return {
        "left of": tx1 <= ax0,
        "right of": ax1 <= tx0,
        "above": ty1 <= ay0,
        "below": ay1 <= ty0,
    }[rel]


def resolve(text: str, objects) -> list[int]:
    """Indices of the objects an English referring expression denotes (independent of the generator)."""
    words = text.split()
    assert words[0] == "the"
    words = words[1:]
    for rel in ("left of", "right of", "above", "below"):
        m = re.fullmatch(rf"the (.+?) {rel} (the .+)", text)
        if m:
            anchors = resolve(m.group(2), objects)
            assert len(anchors) == 1, "ambiguous anchor"
            pred = parse_desc(m.group(1).split())
            return [
                i for i, o in enumerate(objects) if i != anchors[0] and pred(o) and strictly(rel, o, objects[anchors[0]])
            ]
    if words[0] in ("largest", "smallest"):
        pred = parse_desc(words[1:])
        cands = [i for i, o in enumerate(objects) if pred(o)]
        areas = [(objects[i].pixel_box[2] - objects[i].pixel_box[0]) ** 2 for i in cands]
        best = max(areas) if words[0] == "largest" else min(areas)
        return [i for i, a in zip(cands, areas) if a == best]
    pred = parse_desc(words)
    return [i for i, o in enumerate(objects) if pred(o)]


# ----------------------------------------------------------------- tests


def test_deterministic_for_seed():
    a = syn.make_dataset(20, seed=7, split="train")
    b = syn.make_dataset(20, seed=7, split="train")
    c = syn.make_dataset(20, seed=8, split="train")
    for x, y in zip(a, b):
        assert (x.question, x.answer, x.objects) == (y.question, y.answer, y.objects)
        assert np.array_equal(np.asarray(x.image), np.asarray(y.image))
    assert [x.question for x in a] != [x.question for x in c]
    # sample i does not depend on how many samples are drawn, nor on the start
    assert syn.make_dataset(5, seed=7, split="train", start=15)[0].question == a[15].question
    assert [x.question for x in syn.make_dataset(20, seed=7, split="val")] != [x.question for x in a]


def test_mixture(samples):
    kinds = {s.kind for s in samples}
    assert kinds == {"grounding", "vqa"}
    g = [s for s in samples if s.kind == "grounding"]
    relational = [s for s in g if s.subtype in ("relation", "superlative")]
    assert 0.3 <= len(relational) / len(g) <= 0.7
    assert {s.subtype for s in samples} == {"simple", "relation", "superlative", "exist", "color", "shape", "count"}
    for s in samples:
        assert syn.MIN_OBJECTS <= len(s.objects) <= syn.MAX_OBJECTS
        assert s.image.size == (syn.IMAGE_SIZE, syn.IMAGE_SIZE) and s.image.mode == "RGB"


def test_boxes_match_rendered_objects(samples):
    for s in samples[:80]:
        img = np.asarray(s.image).astype(int)
        for o in s.objects:
            x0, y0, x1, y1 = o.pixel_box
            region = img[y0:y1, x0:x1]
            is_obj = (region == np.array(syn.COLORS[o.color])).all(-1)
            assert is_obj.sum() > 0.4 * (x1 - x0) * (y1 - y0)
            ys, xs = np.nonzero(is_obj)
            # the drawn shape spans its box (to a pixel)
            assert xs.min() <= 1 and ys.min() <= 1 and xs.max() >= x1 - x0 - 2 and ys.max() >= y1 - y0 - 2
            # only background or the object's colour inside its box
            bg = (region == np.array(syn.BACKGROUND)).all(-1)
            assert (bg | is_obj).all()
            # nothing of this object outside the box: a one-pixel ring around it is background
            ring = img[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1].copy()
            ring[(1 if y0 else 0) : (1 if y0 else 0) + (y1 - y0), (1 if x0 else 0) : (1 if x0 else 0) + (x1 - x0)] = syn.BACKGROUND
            assert (ring == np.array(syn.BACKGROUND)).all()
            assert o.box == tuple(round(v / syn.IMAGE_SIZE, 2) for v in (x0, y0, x1, y1))


def test_grounding_answers_unique_and_correct(samples):
    n_rel = 0
    for s in samples:
        if s.kind != "grounding":
            continue
        assert s.question == f"{syn.GROUNDING_PREFIX} {s.expression}."
        hits = resolve(s.expression, s.objects)
        assert hits == [s.target], (s.expression, s.objects)
        assert s.box == s.objects[s.target].box
        assert syn.parse_box(s.answer) == s.box
        assert re.fullmatch(r"\[\d\.\d\d, \d\.\d\d, \d\.\d\d, \d\.\d\d\]", s.answer)
        n_rel += s.subtype != "simple"
    assert n_rel > 0


def test_vqa_answers_correct(samples):
    for s in samples:
        if s.kind != "vqa":
            continue
        q = s.question
        if m := re.fullmatch(r"Is there a (\w+) (\w+)\?", q):
            pred = parse_desc([m.group(1), m.group(2)])
            assert s.answer == ("yes" if any(pred(o) for o in s.objects) else "no")
        elif m := re.fullmatch(r"How many (.+) are there\?", q):
            pred = parse_desc(m.group(1).split())
            assert s.answer == str(sum(pred(o) for o in s.objects))
        elif m := re.fullmatch(r"What (color|shape) is (the .+)\?", q):
            hits = resolve(m.group(2), s.objects)
            assert len(hits) == 1, q
            o = s.objects[hits[0]]
            assert s.answer == (o.color if m.group(1) == "color" else o.shape)
            # the target's own description never gives the answer away (an anchor's may)
            own = re.split(r" (?:left of|right of|above|below) ", m.group(2))[0]
            assert s.answer not in own.split()
        else:
            raise AssertionError(q)
        assert len(s.answer.split()) == 1


def test_parse_box():
    assert syn.parse_box("[0.12, 0.34, 0.56, 0.78]") == (0.12, 0.34, 0.56, 0.78)
    assert syn.parse_box("[ 0.12 , 0.34 , 0.56 , 0.78 ]") == (0.12, 0.34, 0.56, 0.78)
    assert syn.parse_box("the box is [0.1,0.2,1.00,1] ok") == (0.1, 0.2, 1.0, 1.0)
    assert syn.parse_box("[0.12, 0.34, 0.56]") is None
    assert syn.parse_box("red") is None
    assert syn.parse_box("") is None
    assert syn.format_box((0.0, 0.08333, 0.5, 1.0)) == "[0.00, 0.08, 0.50, 1.00]"


def test_iou():
    assert syn.iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert syn.iou((0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1)) == 0.0
    assert syn.iou((0, 0, 0.5, 1), (0, 0, 1, 1)) == pytest.approx(0.5)
    assert syn.iou((0, 0, 0.2, 0.2), (0.1, 0.1, 0.3, 0.3)) == pytest.approx(0.01 / 0.07)
    assert syn.iou(None, (0, 0, 1, 1)) == 0.0
    assert syn.iou((0.5, 0.5, 0.2, 0.2), (0, 0, 1, 1)) == 0.0  # degenerate


def test_vqa_scoring():
    assert syn.vqa_correct("Yes.", "yes")
    assert syn.vqa_correct(" red </s>", "red")
    assert syn.vqa_correct("two", "2")
    assert not syn.vqa_correct("red square", "red")
    assert not syn.vqa_correct("", "no")
    assert syn.grounding_correct("[ 0.10, 0.10, 0.50, 0.50 ]", (0.1, 0.1, 0.5, 0.5))
    assert not syn.grounding_correct("nothing", (0.1, 0.1, 0.5, 0.5))


def test_training_conversations():
    a = syn.make_conversation(3, "train", 11, turns=6)
    b = syn.make_conversation(3, "train", 11, turns=6)
    assert [s.question for s in a] == [s.question for s in b] and len(a) == 6
    assert len({s.question for s in a}) == 6
    assert all(s.objects == a[0].objects for s in a)  # one scene per conversation
    for i in range(20):
        conv = syn.make_conversation(3, "train", i, turns=4, min_objects=1, max_objects=3)
        assert 1 <= len(conv[0].objects) <= 3
        for s in conv:
            if s.kind == "grounding":
                assert resolve(s.expression, s.objects) == [s.target]


def test_slots_layout():
    for s in syn.make_dataset(50, seed=4, split="val", layout="slots"):
        for o in s.objects:
            assert o.x % syn.SLOT == 0 and o.y % syn.SLOT == 0 and o.size in syn.SLOT_SIZES
        assert len({(o.x, o.y) for o in s.objects}) == len(s.objects)
    # the default layout is unchanged by the option
    assert [x.question for x in syn.make_dataset(5, seed=4, split="val")] == [
        x.question for x in syn.make_dataset(5, seed=4, split="val", layout=syn.DEFAULT_LAYOUT)
    ]
