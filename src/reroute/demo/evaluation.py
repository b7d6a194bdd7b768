"""The demo task's evaluator: greedy, batched answers (left padding), each scored against its sample
(grounding: IoU >= 0.5 of the parsed box; VQA: exact match after normalisation), and the metrics.
Training scores its held-out splits with it; `reroute demo` scores every routing configuration."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reroute.demo import modeling, synthetic


def score_answer(sample: synthetic.Sample, text: str) -> dict:
    """One record: the sample's question, answer, kind and subtype, the model's ``text``, whether it is
    correct, and for grounding the parsed box and its IoU."""
    rec = {
        "question": sample.question,
        "answer": sample.answer,
        "prediction": text,
        "kind": sample.kind,
        "subtype": sample.subtype,
    }
    if sample.kind == "grounding":
        box = synthetic.parse_box(text)
        rec["pred_box"] = box
        rec["iou"] = synthetic.iou(box, sample.box)
        rec["correct"] = rec["iou"] >= 0.5
    else:
        rec["correct"] = synthetic.vqa_correct(text, sample.answer)
    return rec


def summarize(predictions: Sequence[dict]) -> dict:
    """Metrics from per-sample records: grounding Acc@0.5, mean IoU, VQA accuracy, per-subtype accuracy."""
    g = [p for p in predictions if p["kind"] == "grounding"]
    v = [p for p in predictions if p["kind"] == "vqa"]
    metrics = {
        "n": len(predictions),
        "n_grounding": len(g),
        "n_vqa": len(v),
        "grounding_acc50": sum(p["correct"] for p in g) / len(g) if g else float("nan"),
        "grounding_miou": sum(p["iou"] for p in g) / len(g) if g else float("nan"),
        "vqa_acc": sum(p["correct"] for p in v) / len(v) if v else float("nan"),
        "by_subtype": {},
    }
    for sub in sorted({p["subtype"] for p in predictions}):
        ps = [p for p in predictions if p["subtype"] == sub]
        metrics["by_subtype"][sub] = {"n": len(ps), "acc": sum(p["correct"] for p in ps) / len(ps)}
    return metrics


@torch.no_grad()
def generate_answers(
    model, processor, images, questions: Sequence[str], batch_size: int = 32, max_new_tokens: int = 12
) -> list[str]:
    """Greedy answers to ``questions`` (one image each), batched with left padding."""
    tok = processor.tokenizer
    old_side = tok.padding_side
    tok.padding_side = "left"
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for start in range(0, len(questions), batch_size):
            imgs = list(images[start : start + batch_size])
            texts = [modeling.format_prompt(q) for q in questions[start : start + batch_size]]
            inputs = processor(images=imgs, text=texts, return_tensors="pt", padding=True)
            inputs = {k: v.to(model.device) for k, v in inputs.items()}
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            gen = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
            new = gen[:, inputs["input_ids"].shape[1] :]
            out.extend(tok.batch_decode(new, skip_special_tokens=True))
    finally:
        tok.padding_side = old_side
        model.train(was_training)
    return [t.strip() for t in out]


def evaluate(
    model, processor, samples: Sequence[synthetic.Sample], batch_size: int = 32, max_new_tokens: int = 12
) -> tuple[list[dict], dict]:
    """Greedy, batched (left padding) evaluation.

    Returns ``(predictions, metrics)``: one record per sample (question, answer, prediction,
    kind, subtype, correct, and for grounding pred_box and iou), and ``summarize(predictions)``
    (``grounding_acc50`` = IoU >= 0.5 of the parsed box, ``vqa_acc`` = exact match after
    normalisation, ``grounding_miou``, counts, ``by_subtype``).
    """
    texts = generate_answers(
        model, processor, [s.image for s in samples], [s.question for s in samples], batch_size, max_new_tokens
    )
    predictions = [score_answer(s, t) for s, t in zip(samples, texts)]
    return predictions, summarize(predictions)
