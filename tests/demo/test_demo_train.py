"""The demo model's training-only machinery: per-patch probe targets, the attention probe, the
description targets, and the seed-to-weights reproducibility of `reroute train-demo-model`."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from reroute.demo import modeling, synthetic
from reroute.demo.training import TrainConfig, train
from reroute.demo.training.attention import AttentionProbe, attention_targets
from reroute.demo.training.data import encode_conversations
from reroute.demo.training.description import description_targets
from reroute.demo.training.probes import probe_classes, probe_targets


@pytest.mark.parametrize("layout", synthetic.LAYOUTS)
def test_probe_targets_label_every_drawn_patch_with_its_object(layout):
    scenes = [synthetic.random_scene(random.Random(i), layout=layout) for i in range(20)]
    targets = probe_targets(scenes).reshape(len(scenes), synthetic.GRID, synthetic.GRID, -1)
    background = [n - 1 for n in probe_classes().values()]
    for objects, t in zip(scenes, targets):
        # an independent reading: the patches of the rendered image holding a non-background pixel
        pixels = np.asarray(synthetic.render(objects)).reshape(
            synthetic.GRID, synthetic.CELL, synthetic.GRID, synthetic.CELL, 3
        )
        drawn = (pixels != synthetic.BACKGROUND).any(axis=(1, 3, 4))
        foreground = (t != torch.tensor(background)).all(-1).numpy()
        assert not (drawn & ~foreground).any()  # every drawn patch is labelled with an object
        assert foreground.sum() == sum(o.size**2 for o in objects)  # and only the objects' boxes are
        for o in objects:
            patch = t[o.y + o.size - 1, o.x]  # the object's bottom-left patch
            color, shape, size, x1, y1, x2, y2 = patch.tolist()
            assert list(synthetic.COLORS)[color] == o.color and synthetic.OBJECT_SHAPES[shape] == o.shape
            assert size == o.size
            assert tuple(v * synthetic.CELL / synthetic.IMAGE_SIZE for v in (x1, y1, x2, y2)) == pytest.approx(o.box, abs=0.005)


def test_attention_probe_equals_eager_attention_and_leaves_outputs_unchanged():
    model, processor = modeling.build_model(seed=3)
    model.eval()
    convs = [synthetic.make_conversation(0, "train", i, turns=2 + i) for i in range(3)]  # ragged: right padding
    batch = encode_conversations(processor, convs)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    plan = (("words", 1, (1,)), ("anchor", 2, (2, 5)), ("target", 0, (5,)))
    with torch.no_grad():
        sdpa = model(**inputs).logits
        model.set_attn_implementation("eager")
        eager = model(**inputs, output_attentions=True)
        probe = AttentionProbe(plan)
        probe.install(model)
        probed = model(**inputs).logits
    model.set_attn_implementation("sdpa")
    mask = batch["attention_mask"].bool()
    assert torch.allclose(probed[mask], sdpa[mask], atol=1e-5)
    for layer, head in [(1, 1), (2, 2), (5, 2), (5, 0)]:
        reference, probs = eager.attentions[layer][:, head], probe.probs(layer, head)
        for b in range(len(convs)):
            n = int(mask[b].sum())
            assert torch.allclose(probs[b, :n, :n], reference[b, :n, :n], atol=1e-5)
    # the loss is -log of the attention mass on the target keys, row by row, averaged over (target, layer)
    targets = attention_targets(convs, batch, model.config.image_token_id, processor.tokenizer)
    terms = []
    for name, head, layers in plan:
        rows, positions, key_mask = targets[name]
        for layer in layers:
            p = probe.probs(layer, head)
            terms.append(torch.stack([-torch.log(p[r, q][key_mask[m]].sum()) for m, (r, q) in enumerate(zip(rows, positions))]).mean())
    assert torch.allclose(probe.loss(targets), torch.stack(terms).mean(), atol=1e-5)


def _patch_set(img0: int, keys: torch.Tensor) -> set[tuple[int, int]]:
    g = synthetic.GRID
    return {divmod(int(k) - img0, g) for k in keys.nonzero().flatten()}


def _box_set(o: synthetic.SceneObject) -> set[tuple[int, int]]:
    return {(r, c) for r in range(o.y, o.y + o.size) for c in range(o.x, o.x + o.size)}


def _encoded_conversations(seed: int, count: int):
    """``count`` six-turn training conversations of ``seed``, their batch, the tokenizer and the image token id."""
    tok = modeling.build_tokenizer()
    convs = [synthetic.make_conversation(seed, "train", i, turns=6) for i in range(count)]
    batch = encode_conversations(modeling.build_processor(), convs)
    return convs, batch, tok, tok.convert_tokens_to_ids(modeling.IMAGE_TOKEN)


def test_attention_targets_follow_the_referring_expression():
    convs, batch, tok, image_token_id = _encoded_conversations(seed=1, count=6)
    targets = attention_targets(convs, batch, image_token_id, tok)
    questions = [s for c in convs for s in c]
    about_one = [s for s in questions if s.target is not None]
    relations = [s for s in questions if s.meta.get("expr", {}).get("type") == "relation"]
    assert len(targets["target"][0]) == sum(5 if s.kind == "grounding" else 1 for s in about_one)
    assert len(targets["anchor"][0]) == len(targets["anchor_words"][0]) == len(relations) > 0
    assert len(targets["words"][0]) == len(questions)
    for name in ("target", "anchor"):
        for b, q, keys in zip(*targets[name]):
            b, q = int(b), int(q)
            img0 = int((batch["input_ids"][b] == image_token_id).nonzero()[0])
            # the keys are exactly the patches of one object of the scene
            assert _patch_set(img0, keys) in [_box_set(o) for o in convs[b][0].objects]
            # the query predicts "[", a coordinate or an attribute word
            nxt = tok.convert_ids_to_tokens(int(batch["labels"][b, q + 1]))
            assert nxt == "[" or nxt in synthetic.COLORS or nxt in synthetic.OBJECT_SHAPES or nxt.replace(".", "").isdigit(), nxt
    # the words read for each question, in order, spell the expression's descriptors
    read = iter(zip(*targets["words"]))
    for conv_index, conv in enumerate(convs):
        for s in conv:
            b, q, keys = next(read)
            words = tok.convert_ids_to_tokens(batch["input_ids"][b][keys].tolist())
            expr = s.meta.get("expr")
            if expr is not None:
                desc = synthetic.describe(expr["desc"]).split()
                assert words[-len(desc):] == desc, (s.question, words)


def test_description_targets_name_the_expression_attributes():
    convs, batch, tok, image_token_id = _encoded_conversations(seed=2, count=8)
    rows, positions, labels = description_targets(convs, batch, image_token_id, tok)
    colors, shapes = list(synthetic.COLORS), list(synthetic.OBJECT_SHAPES)
    none_color, any_shape, none_shape = len(colors), len(shapes), len(shapes) + 1

    def expected(desc) -> list[int]:
        color, shape = desc
        return [none_color if color is None else colors.index(color), any_shape if shape is None else shapes.index(shape)]

    samples = [s for c in convs for s in c]
    assert len(rows) == len(samples)
    checked = 0
    for s, row, q, label in zip(samples, rows.tolist(), positions.tolist(), labels.tolist()):
        assert tok.convert_ids_to_tokens(int(batch["input_ids"][row, q])) == ":"  # the last prompt position
        expr = s.meta.get("expr")
        if expr is None and s.subtype == "exist":
            color, shape = s.question.removeprefix("Is there a ").removesuffix("?").split()
            assert label == [colors.index(color), shapes.index(shape), none_color, none_shape]
            checked += 1
        elif expr is not None:
            anchor = expected(expr["anchor"]["desc"]) if expr["type"] == "relation" else [none_color, none_shape]
            assert label == expected(expr["desc"]) + anchor, s.question
            checked += 1
    assert checked > len(samples) // 2


def test_a_trained_models_processor_carries_the_demo_chat_template(tmp_path):
    # train-demo-model saves build_processor(); without the template, apply_chat_template (the
    # lmms-eval plugin) fails on a retrained model where the bundled one answers.
    modeling.build_processor().save_pretrained(tmp_path)
    from transformers import AutoProcessor

    saved = AutoProcessor.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a red circle?"}]}]
    assert saved.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == modeling.format_prompt(
        "Is there a red circle?"
    )
    assert saved.chat_template == AutoProcessor.from_pretrained(modeling.MODEL_DIR).chat_template


def _train_tiny(output, seed: int = 0) -> dict:
    """A few steps of both stages (a periodic eval and a checkpoint included), restoring the global
    torch settings ``train`` changes for reproducibility."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    cfg = TrainConfig(
        seed=seed, vision_steps=1, vision_batch_size=4, steps=2, batch_size=2, turns=2, threads=1, eval_every=1,
        eval_samples=2, test_samples=2, checkpoint=True, output=str(output),
    )  # fmt: skip
    try:
        return train(cfg)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def test_training_is_a_pure_function_of_the_seed(tmp_path):
    # what `reroute train-demo-model` promises: the same seed (and threads) gives the same weights, bit for bit
    from safetensors.torch import load_file

    first, second = _train_tiny(tmp_path / "a"), _train_tiny(tmp_path / "b")
    assert len(first["val_history"]) == 1
    for key in ("test_metrics", "val_history"):  # as metrics.json writes them (NaN == NaN there)
        assert json.dumps(first[key]) == json.dumps(second[key]), key
    for name in ("model.safetensors", "checkpoint/model.safetensors"):
        a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # and training moved the weights away from the seed's initialisation
    modeling.build_model(seed=0)[0].save_pretrained(tmp_path / "init")
    untrained, trained = load_file(tmp_path / "init" / "model.safetensors"), load_file(tmp_path / "a" / "model.safetensors")
    assert untrained.keys() == trained.keys()
    assert not all(torch.equal(trained[k], untrained[k]) for k in trained)
