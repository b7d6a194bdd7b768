"""Train and evaluate the bundled demo VLM.

Training is a pure function of the seed (and of ``--threads``: CPU kernels split their reductions
by thread count, so bit-exact reproduction needs the same thread count and CPU type): the model is
initialised from ``seed``, and step ``s`` sees the samples ``train`` ``s*B .. s*B+B-1`` of
``synthetic.make_sample(seed, ...)``, generated on the fly.

Each training sequence is a LLaVA-style multi-turn conversation (``turns`` questions about one
image); the first quarter of the steps uses easier 1-3 object scenes. Besides the LM loss on the
answers, two training-only losses (the saved model is the stock architecture): an auxiliary loss
reading every projected visual token of an object through the tied output embedding (its colour,
shape and box tokens), and a supervised attention loss on one decoder head (``attn_layer``,
``attn_head``; trained with eager attention) pointing the positions that predict a box's corners
at the referred object's corner patches.

``evaluate(model, processor, samples, batch_size)`` is the evaluator (greedy, batched, left
padding) that the demo reuses: it returns per-sample predictions and the metrics
(grounding Acc@0.5, VQA accuracy).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from reroute.demo import modeling, synthetic

log = logging.getLogger("reroute.demo.train")


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 520
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 60
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    threads: int = 1
    turns: int = 6  # questions per image in a training sequence (LLaVA-style multi-turn)
    layout: str | None = None  # scene layout (synthetic.LAYOUTS); None = synthetic.DEFAULT_LAYOUT
    curriculum: float = 0.25  # fraction of the steps trained on easier scenes (1-3 objects)
    eval_every: int = 150
    eval_samples: int = 96  # held-out "val" samples scored during training
    test_samples: int = 500  # held-out "test" samples scored at the end
    eval_batch_size: int = 50
    attn_weight: float = 1.0  # supervised attention of one decoder head (see attention_targets); 0 = off
    attn_layer: int = 5
    attn_head: int = 0
    aux_weight: float = 0.5  # auxiliary loss on the visual tokens (see _forward_with_aux); 0 = off
    checkpoint: bool = False  # save_pretrained into <output>/checkpoint at every periodic eval
    bf16: bool = False  # CPU bf16 autocast for the forward pass (weights and optimizer stay float32)
    output: str = str(modeling.MODEL_DIR)


# ----------------------------------------------------------------------------- data


def encode_conversations(processor, conversations: Sequence[Sequence[synthetic.Sample]]) -> dict[str, torch.Tensor]:
    """Training tensors, right-padded, for multi-turn conversations (one image each).

    Turn 1 is the prompt exactly as the processor builds it (``format_prompt``), later turns use
    ``format_followup``; every answer is followed by ``</s>``. Labels are -100 everywhere except
    on the answer tokens (and their ``</s>``).
    """
    tok = processor.tokenizer
    n_img = modeling.NUM_IMAGE_TOKENS
    seqs, labs = [], []
    for conv in conversations:
        ids: list[int] = []
        lab: list[int] = []
        for t, s in enumerate(conv):
            if t == 0:
                q = modeling.format_prompt(s.question).replace(modeling.IMAGE_TOKEN, modeling.IMAGE_TOKEN * n_img)
                q_ids = tok(q, add_special_tokens=True)["input_ids"]
            else:
                q_ids = tok(modeling.format_followup(s.question), add_special_tokens=False)["input_ids"]
            a_ids = tok(modeling.format_answer(s.answer), add_special_tokens=False)["input_ids"]
            ids += q_ids + a_ids
            lab += [-100] * len(q_ids) + a_ids
        seqs.append(ids)
        labs.append(lab)
    length = max(map(len, seqs))
    n = len(seqs)
    input_ids = torch.full((n, length), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((n, length), -100, dtype=torch.long)
    mask = torch.zeros((n, length), dtype=torch.long)
    for i, (ids, lab) in enumerate(zip(seqs, labs)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    pixel_values = processor.image_processor([c[0].image for c in conversations], return_tensors="pt")["pixel_values"]
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "pixel_values": pixel_values}


def encode_batch(processor, samples: Sequence[synthetic.Sample]) -> dict[str, torch.Tensor]:
    """Single-turn training tensors: the prompt exactly as the processor builds it, then the answer."""
    return encode_conversations(processor, [[s] for s in samples])


# ----------------------------------------------------------------------------- evaluation


def _score(sample: synthetic.Sample, text: str) -> dict:
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
    predictions = [_score(s, t) for s, t in zip(samples, texts)]
    return predictions, summarize(predictions)


# ----------------------------------------------------------------------------- training


def patch_targets(processor, conversations: Sequence[Sequence[synthetic.Sample]]) -> torch.Tensor:
    """Soft targets over the vocabulary for every visual token (B, NUM_IMAGE_TOKENS, V).

    A patch inside an object targets the object's colour, shape and four box-coordinate tokens
    (1/6 each); background patches have an all-zero row (no loss). Used by the auxiliary loss.
    """
    tok = processor.tokenizer
    g = synthetic.GRID
    out = torch.zeros(len(conversations), g * g, len(tok))
    for b, conv in enumerate(conversations):
        for o in conv[0].objects:
            words = [o.color, o.shape] + [f"{v:.2f}" for v in o.box]
            ids = tok.convert_tokens_to_ids(words)
            for r in range(o.y, o.y + o.size):
                for c in range(o.x, o.x + o.size):
                    for i in ids:
                        out[b, r * g + c, i] += 1.0 / len(ids)
    return out


def _forward_with_aux(
    model, batch: dict, targets: torch.Tensor, attn_targets=None, attn_layer: int = 0, attn_head: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LM loss, plus an auxiliary loss that reads each projected visual token with the (tied)
    output embedding: a patch of an object should name the object's colour, shape and box tokens.

    The visual tokens are computed once and fed through ``inputs_embeds``, exactly as
    ``LlavaForConditionalGeneration.forward`` would merge them. Training only; the saved model is
    the stock architecture.
    """
    emb = model.get_input_embeddings()
    feats = model.model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
    feats = torch.cat(list(feats), 0) if isinstance(feats, (list, tuple)) else feats.reshape(-1, feats.shape[-1])
    ids = batch["input_ids"]
    embeds = emb(ids)
    mask = (ids == model.config.image_token_id).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(mask, feats.to(embeds.dtype))
    want_attn = bool(attn_targets)
    out = model(
        inputs_embeds=embeds,
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
        output_attentions=want_attn,
    )
    if targets is not None:
        logits = feats @ emb.weight.t()  # (B*P, V)
        t = targets.reshape(-1, targets.shape[-1])
        fg = t.sum(-1) > 0
        aux = -(t[fg] * torch.log_softmax(logits[fg].float(), -1)).sum(-1).mean()
    else:
        aux = out.loss * 0.0
    attn_loss = _attention_loss(out.attentions[attn_layer][:, attn_head].float(), attn_targets) if want_attn else out.loss * 0.0
    return out.loss, aux, attn_loss


def attention_targets(conversations: Sequence[Sequence[synthetic.Sample]], batch: dict, image_token_id: int):
    """Where the supervised attention head should look, as ``(row, query position, key positions)``.

    For a grounding answer ``[x1, y1, x2, y2]``, the positions that predict x1 and y1 look at the
    referred object's top-left patch, those that predict x2 and y2 at its bottom-right patch; for
    a colour/shape question about an object, the position that predicts the answer looks at all
    of the object's patches.
    """
    g = synthetic.GRID
    out = []
    labels, ids = batch["labels"], batch["input_ids"]
    for b, conv in enumerate(conversations):
        img0 = int((ids[b] == image_token_id).nonzero()[0])
        lab = labels[b]
        # answer spans, in order: maximal runs of supervised labels
        starts = [i for i in range(len(lab)) if lab[i] != -100 and (i == 0 or lab[i - 1] == -100)]
        assert len(starts) == len(conv)
        for s, a0 in zip(conv, starts):
            # labels[i] is the token at i, predicted by the logits at i - 1
            if s.kind == "grounding":
                o = s.objects[s.target]
                tl = img0 + o.y * g + o.x
                br = img0 + (o.y + o.size - 1) * g + (o.x + o.size - 1)
                # answer tokens: [ x1 , y1 , x2 , y2 ] </s>  at a0 .. ; x1 is predicted at a0
                out += [(b, a0, [tl]), (b, a0 + 2, [tl]), (b, a0 + 4, [br]), (b, a0 + 6, [br])]
            elif s.target is not None:
                o = s.objects[s.target]
                keys = [img0 + r * g + c for r in range(o.y, o.y + o.size) for c in range(o.x, o.x + o.size)]
                out.append((b, a0 - 1, keys))
    return out


def _attention_loss(attn: torch.Tensor, targets) -> torch.Tensor:
    """-log(attention mass on the target keys), averaged; ``attn`` is (B, L, L) of one head."""
    losses = [-torch.log(attn[b, q, keys].sum().clamp_min(1e-6)) for b, q, keys in targets]
    return torch.stack(losses).mean() if losses else attn.sum() * 0.0


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _param_groups(model, weight_decay: float):
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _fmt_metrics(m: dict) -> str:
    subs = " ".join(f"{k}={v['acc']:.2f}" for k, v in m["by_subtype"].items())
    return f"grounding_acc50={m['grounding_acc50']:.3f} miou={m['grounding_miou']:.3f} vqa_acc={m['vqa_acc']:.3f} [{subs}]"


def train(cfg: TrainConfig, command: str | None = None) -> dict:
    """Train from scratch, evaluate on the held-out split, ``save_pretrained`` into ``cfg.output``."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    model, processor = modeling.build_model(cfg.seed)
    if cfg.attn_weight > 0:
        model.set_attn_implementation("eager")  # attention probabilities are needed for the loss
    model.train()
    log.info(
        "model: %.2fM parameters, %d visual tokens/image; config %s",
        modeling.num_parameters(model) / 1e6,
        modeling.NUM_IMAGE_TOKENS,
        json.dumps(asdict(cfg)),
    )
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)
    val = synthetic.make_dataset(cfg.eval_samples, cfg.seed, "val", layout=cfg.layout)
    history = []
    ema = None
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        objects = (1, 3) if step < cfg.curriculum * cfg.steps else (synthetic.MIN_OBJECTS, synthetic.MAX_OBJECTS)
        convs = [
            synthetic.make_conversation(cfg.seed, "train", step * cfg.batch_size + i, cfg.turns, *objects, cfg.layout)
            for i in range(cfg.batch_size)
        ]
        batch = encode_conversations(processor, convs)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            if cfg.aux_weight > 0 or cfg.attn_weight > 0:
                lm_loss, aux_loss, attn_loss = _forward_with_aux(
                    model,
                    batch,
                    patch_targets(processor, convs) if cfg.aux_weight > 0 else None,
                    attention_targets(convs, batch, model.config.image_token_id) if cfg.attn_weight > 0 else None,
                    cfg.attn_layer,
                    cfg.attn_head,
                )
                loss = lm_loss + cfg.aux_weight * aux_loss + cfg.attn_weight * attn_loss
                parts = (lm_loss.item(), aux_loss.item(), attn_loss.item())
            else:
                loss = model(**batch).loss
                parts = (loss.item(), 0.0, 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 25 == 0 or step == cfg.steps - 1:
            log.info(
                "step %5d/%d loss %.4f (ema %.4f; lm %.4f aux %.4f attn %.4f) lr %.2e  %.0fs",
                step, cfg.steps, loss.item(), ema, *parts, lr_at(step, cfg), time.time() - t0,
            )
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0) and step + 1 < cfg.steps:
            model.set_attn_implementation("sdpa")  # same math, faster generation
            _, m = evaluate(model, processor, val, cfg.eval_batch_size)
            if cfg.attn_weight > 0:
                model.set_attn_implementation("eager")
            history.append({"step": step + 1, "loss_ema": ema, **m})
            log.info("eval @%d (val, %d samples): %s", step + 1, len(val), _fmt_metrics(m))
            if cfg.checkpoint:
                model.save_pretrained(Path(cfg.output) / "checkpoint")
    train_time = time.time() - t0
    model.set_attn_implementation("sdpa")
    model.eval()
    test = synthetic.make_dataset(cfg.test_samples, cfg.seed, "test", layout=cfg.layout)
    _, metrics = evaluate(model, processor, test, cfg.eval_batch_size)
    log.info("final test (%d samples): %s", len(test), _fmt_metrics(metrics))
    total_time = time.time() - t0

    model.set_attn_implementation("sdpa")
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    result = {
        "command": command,
        "config": asdict(cfg),
        "train_seconds": round(train_time, 1),
        "total_seconds": round(total_time, 1),
        "test_split": {"seed": cfg.seed, "split": "test", "n": len(test)},
        "test_metrics": metrics,
        "val_history": history,
        "torch": torch.__version__,
        "num_parameters": modeling.num_parameters(model),
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    log.info("saved to %s in %.0fs", out, total_time)
    return result


def setup_logging(log_file: str | os.PathLike | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", handlers=handlers, force=True)
