"""The bundled demo model: tokenizer, processor, offline loading, and a tiny end-to-end evaluation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from reroute.demo import modeling, synthetic
from reroute.demo.evaluation import evaluate
from reroute.demo.training.data import encode_batch

MODEL_DIR = modeling.MODEL_DIR


@pytest.fixture(scope="module")
def bundled():
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(str(MODEL_DIR), attn_implementation="sdpa")
    model.eval()
    processor = AutoProcessor.from_pretrained(str(MODEL_DIR))
    return model, processor


def test_tokenizer_covers_the_task():
    tok = modeling.build_tokenizer()
    for s in synthetic.make_dataset(200, seed=5, split="val"):
        ids = tok(modeling.format_prompt(s.question) + modeling.format_answer(s.answer))["input_ids"]
        assert tok.unk_token_id not in ids, s.question
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    box = tok("[0.12, 0.34, 1.00, 0.00]", add_special_tokens=False)["input_ids"]
    assert len(box) == 9  # every coordinate is a single token
    assert synthetic.parse_box(tok.decode(box)) == (0.12, 0.34, 1.0, 0.0)


def test_bundled_files_and_size():
    names = {p.name for p in MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= names or {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    } <= names
    size = sum(p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file())
    assert size < 30 * 2**20
    metrics = json.loads((MODEL_DIR / "metrics.json").read_text())
    assert metrics["command"].startswith("reroute train-demo-model")


def test_bundled_model_loads_offline(bundled):
    model, processor = bundled
    cfg = model.config
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert cfg.vision_config.model_type == "clip_vision_model" and cfg.text_config.model_type == "llama"
    assert cfg.text_config.num_hidden_layers >= 8
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config._attn_implementation == "sdpa"
    assert cfg.vision_feature_select_strategy == "default"


def test_processor_image_tokens(bundled):
    model, processor = bundled
    s = synthetic.make_dataset(3, seed=1, split="test")
    inputs = processor(
        images=[x.image for x in s], text=[modeling.format_prompt(x.question) for x in s], return_tensors="pt", padding=True
    )
    n_img = (inputs["input_ids"] == model.config.image_token_id).sum(1)
    assert n_img.tolist() == [modeling.NUM_IMAGE_TOKENS] * 3
    assert modeling.NUM_IMAGE_TOKENS >= 100
    assert tuple(inputs["pixel_values"].shape) == (3, 3, synthetic.IMAGE_SIZE, synthetic.IMAGE_SIZE)
    # left padding for batched generation
    assert (inputs["attention_mask"][:, -1] == 1).all()
    # the vision tower yields exactly as many features as there are placeholders
    with torch.no_grad():
        feats = model.get_image_features(pixel_values=inputs["pixel_values"])
    feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
    total = sum(f.shape[0] for f in feats) if isinstance(feats, (list, tuple)) else feats.shape[0] * feats.shape[1]
    assert total == 3 * modeling.NUM_IMAGE_TOKENS


def test_training_encoding_matches_processor(bundled):
    _, processor = bundled
    s = synthetic.make_dataset(4, seed=2, split="train")
    batch = encode_batch(processor, s)
    processor.tokenizer.padding_side = "left"
    for i, x in enumerate(s):
        ref = processor(images=[x.image], text=[modeling.format_prompt(x.question)], return_tensors="pt")
        n = ref["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][i, :n], ref["input_ids"][0])
        assert torch.allclose(batch["pixel_values"][i], ref["pixel_values"][0])
        answer = batch["labels"][i][batch["labels"][i] != -100]
        assert processor.tokenizer.decode(answer, skip_special_tokens=True).replace(" ", "") == x.answer.replace(" ", "")


def test_sdpa_matches_eager(bundled):
    model, processor = bundled
    from transformers import LlavaForConditionalGeneration

    eager = LlavaForConditionalGeneration.from_pretrained(str(MODEL_DIR), attn_implementation="eager").eval()
    s = synthetic.make_dataset(2, seed=3, split="test")
    inputs = processor(images=[x.image for x in s], text=[modeling.format_prompt(x.question) for x in s], return_tensors="pt", padding=True)
    with torch.no_grad():
        a = model(**inputs).logits
        b = eager(**inputs).logits
    mask = inputs["attention_mask"].bool()
    assert torch.allclose(a[mask], b[mask], atol=1e-4, rtol=1e-4)


def test_tiny_end_to_end_evaluation(bundled):
    model, processor = bundled
    samples = synthetic.make_dataset(6, seed=0, split="test")
    preds, metrics = evaluate(model, processor, samples, batch_size=4)
    assert len(preds) == 6
    for p, s in zip(preds, samples):
        assert p["question"] == s.question and p["kind"] == s.kind and isinstance(p["prediction"], str)
        assert isinstance(p["correct"], bool)
        if s.kind == "grounding":
            assert 0.0 <= p["iou"] <= 1.0
    assert metrics["n"] == 6 and metrics["n_grounding"] + metrics["n_vqa"] == 6
    for key in ("grounding_acc50", "vqa_acc", "grounding_miou"):
        v = metrics[key]
        assert math.isnan(v) or 0.0 <= v <= 1.0
    # deterministic: the same call gives the same predictions
    again, _ = evaluate(model, processor, samples, batch_size=3)
    assert [p["prediction"] for p in again] == [p["prediction"] for p in preds]
