"""Train and evaluate the bundled demo VLM.

Training is a pure function of the seed (and of ``--threads``: CPU kernels split their reductions
by thread count, so bit-exact reproduction needs the same thread count and CPU type). Data are
generated on the fly from the seed; nothing is downloaded. Two stages, as LLaVA trains:

1. *Vision* (``vision_steps``): the vision tower and projector learn, through training-only
   linear probes (``PatchProbes``), to make every projected visual token name its object's
   colour, shape, size and box edges (or "background"): 144 labels per image, so this stage
   costs a few minutes.
2. *Whole model* (``steps``): LLaVA-style multi-turn conversations (``turns`` questions about
   one image), LM loss on the answers, the probe loss kept on, and supervised attention
   (``ATTENTION_PLAN``): at the last prompt position, early heads read the words naming the
   referred object (and a relation's anchor), a middle head looks at the anchor's patches and
   late heads at the referred object's patches. ``AttentionProbe`` (SDPA plus the supervised
   heads' queries and keys) computes that loss without eager attention. ``DescriptionProbes``
   make the last prompt position's hidden state name the attributes the question asks about.
   The first ``curriculum`` fraction of the steps uses 1-3 object scenes.

The saved model is the stock ``LlavaForConditionalGeneration``: probes and the attention
function exist only during training.

``evaluate(model, processor, samples, batch_size)`` is the evaluator (greedy, batched, left
padding) that the demo reuses: it returns per-sample predictions and the metrics
(grounding Acc@0.5, VQA accuracy).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
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
    layout: str | None = None  # scene layout (synthetic.LAYOUTS); None = synthetic.DEFAULT_LAYOUT
    # stage 1: vision tower + projector on dense per-patch targets (PatchProbes)
    vision_steps: int = 300
    vision_batch_size: int = 64
    vision_lr: float = 2e-3
    # stage 2: the whole model on multi-turn conversations
    steps: int = 1500
    batch_size: int = 16
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 30
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    threads: int = 2
    turns: int = 8  # questions per image in a training sequence (LLaVA-style multi-turn)
    curriculum: float = 0.1  # fraction of the steps trained on easier scenes (1-3 objects)
    eval_every: int = 200
    eval_samples: int = 96  # held-out "val" samples scored during training
    test_samples: int = 500  # held-out "test" samples scored at the end
    eval_batch_size: int = 50
    probe_weight: float = 0.5  # PatchProbes loss kept on during stage 2; 0 = off
    qk_lr_scale: float = 1.0  # learning-rate multiplier of the decoder's q/k projections
    attn_weight: float = 0.5  # supervised attention (ATTENTION_PLAN, AttentionProbe); 0 = off
    description_weight: float = 0.5  # DescriptionProbes on the last prompt position; 0 = off
    checkpoint: bool = False  # save_pretrained into <output>/checkpoint at every periodic eval
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


PROBE_FIELDS = ("color", "shape", "size", "x1", "y1", "x2", "y2")


def _probe_classes() -> dict[str, int]:
    """Classes per probe field; the last class of each is "no object here" (background patch)."""
    edges = synthetic.GRID + 1  # a box edge is a cell boundary 0..GRID
    sizes = max(*synthetic.SIZES, *synthetic.SLOT_SIZES) + 1  # a side of 0..max cells
    return {
        "color": len(synthetic.COLORS) + 1,
        "shape": len(synthetic.SHAPES) + 1,
        "size": sizes + 1,
        **{edge: edges + 1 for edge in ("x1", "y1", "x2", "y2")},
    }


class PatchProbes(torch.nn.Module):
    """Training-only linear read-outs of every visual token: its object's colour, shape, size and box
    edges (or "background"). Dense supervision (144 labels per image) teaches the vision tower and
    projector to make each visual token say what and where its object is; discarded after training."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(hidden_size, n) for k, n in _probe_classes().items()})

    def loss(self, feats: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over fields; ``feats`` (B*P, H), ``targets`` (B*P, len(PROBE_FIELDS)).

        The probes read the RMS-normalised token, as every decoder layer does, so the loss must
        separate directions and cannot be lowered by inflating the tokens' norm (probing raw
        tokens grew it to ~110, against ~0.2 for a word embedding)."""
        feats = torch.nn.functional.rms_norm(feats.float(), (feats.shape[-1],))
        losses = [
            torch.nn.functional.cross_entropy(self.heads[k](feats), targets[:, i])
            for i, k in enumerate(PROBE_FIELDS)
        ]
        return torch.stack(losses).mean()


def probe_targets(scenes: Sequence[Sequence[synthetic.SceneObject]]) -> torch.Tensor:
    """(B * P, len(PROBE_FIELDS)) class indices for every patch of every scene (row-major patches)."""
    g = synthetic.GRID
    classes = _probe_classes()
    background = [classes[k] - 1 for k in PROBE_FIELDS]
    colors, shapes = list(synthetic.COLORS), list(synthetic.SHAPES)
    out = torch.tensor(background, dtype=torch.long).repeat(len(scenes), g * g, 1)
    for b, objects in enumerate(scenes):
        for o in objects:
            row = torch.tensor([colors.index(o.color), shapes.index(o.shape), o.size, *o.cell_box])
            for r in range(o.y, o.y + o.size):
                out[b, r * g + o.x : r * g + o.x + o.size] = row
    return out.reshape(-1, len(PROBE_FIELDS))


def _visual_tokens(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The projected visual tokens, (B, P, H): what LLaVA merges into the decoder's input."""
    feats = model.model.get_image_features(pixel_values=pixel_values).pooler_output
    if isinstance(feats, (list, tuple)):
        feats = torch.stack(list(feats))
    return feats.reshape(pixel_values.shape[0], -1, feats.shape[-1])


#: Supervised attention, as ``(target, head, layers)``: a small model from scratch learns where to
#: look far sooner when told. The answer position first reads the words naming the referred object
#: (and, in a relation, its anchor), then looks at the anchor's patches, then at the referred
#: object's patches: the depth-dependent importance the routing methods are about.
ATTENTION_PLAN: tuple[tuple[str, int, tuple[int, ...]], ...] = (
    ("words", 2, (1, 2)),
    ("anchor_words", 3, (1, 2)),
    ("anchor", 1, (3, 4, 5)),
    ("target", 0, (5, 6, 7, 8, 9, 10, 11)),
)


class AttentionProbe:
    """An attention function (registered with transformers' ``AttentionInterface`` for training only)
    that runs SDPA as usual and also keeps the rotated queries and keys of the supervised heads, so
    a supervised-attention loss needs neither eager attention nor every head's L x L weights:
    ``loss`` scores only the supervised query rows."""

    name = "reroute_demo_probe"

    def __init__(self, plan: Sequence[tuple[str, int, Sequence[int]]] = ATTENTION_PLAN):
        self.plan = tuple((target, head, tuple(layers)) for target, head, layers in plan)
        self.heads: dict[int, set[int]] = {}
        for _, head, layers in self.plan:
            for layer in layers:
                self.heads.setdefault(layer, set()).add(head)
        self.captured: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, float]] = {}

    def __call__(self, module, query, key, value, attention_mask, scaling=None, **kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        layer = getattr(module, "layer_idx", None)
        if layer in self.heads and getattr(module, "is_causal", False):
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            for head in self.heads[layer]:
                kv_head = head * key.shape[1] // query.shape[1]
                self.captured[(layer, head)] = (query[:, head].float(), key[:, kv_head].float(), scale)
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    def install(self, model) -> None:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(self.name, self)
        AttentionMaskInterface.register(self.name, sdpa_mask)
        model.set_attn_implementation(self.name)

    def scores(self, layer: int, head: int, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Causal attention logits (M, L) of ``head`` at ``layer`` for query ``positions`` of batch
        ``rows`` (right padding: a real query sees only real keys under the causal mask)."""
        q, k, scale = self.captured[(layer, head)]
        logits = torch.einsum("md,mld->ml", q[rows, positions], k[rows]) * scale
        future = torch.arange(k.shape[1], device=k.device)[None, :] > positions[:, None]
        return logits.masked_fill(future, float("-inf"))

    def probs(self, layer: int, head: int) -> torch.Tensor:
        """The full (B, L, L) attention probabilities of a captured head (for tests)."""
        q, k, _ = self.captured[(layer, head)]
        b, n = q.shape[:2]
        rows = torch.arange(b).repeat_interleave(n)
        positions = torch.arange(n).repeat(b)
        return self.scores(layer, head, rows, positions).softmax(-1).reshape(b, n, n)

    def loss(self, targets: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Mean over the plan's (target, layer) pairs and their rows of -log(attention mass on the keys)."""
        losses = []
        for target, head, layers in self.plan:
            rows, positions, key_mask = targets[target]
            if len(rows) == 0:
                continue
            for layer in layers:
                logits = self.scores(layer, head, rows, positions)
                on_target = logits.masked_fill(~key_mask, float("-inf")).logsumexp(-1)
                losses.append((logits.logsumexp(-1) - on_target).mean())
        return torch.stack(losses).mean()


_DESCRIPTOR_WORDS = frozenset(
    [*synthetic.COLORS, *synthetic.SHAPES, *(s + "s" for s in synthetic.SHAPES), "shape", "shapes", *synthetic.SUPERLATIVES]
)
_RELATION_WORDS = frozenset(r.split()[0] for r in synthetic.RELATIONS)  # "left", "right", "above", "below"


def _turns(conversations, batch: dict, image_token_id: int, tokenizer):
    """Yield ``(row, first image position, sample, answer start, described words, anchor words)`` for
    every turn of every conversation; the word lists are token positions in that turn's question:
    the descriptors before the relation word (never "shape" in "What shape is"), and after it."""
    g = synthetic.GRID
    labels, ids = batch["labels"], batch["input_ids"]
    for b, conv in enumerate(conversations):
        tokens = tokenizer.convert_ids_to_tokens(ids[b].tolist())
        img0 = int((ids[b] == image_token_id).nonzero()[0])
        lab = labels[b]
        starts = [i for i in range(len(lab)) if lab[i] != -100 and (i == 0 or lab[i - 1] == -100)]
        ends = [i for i in range(len(lab)) if lab[i] != -100 and (i + 1 == len(lab) or lab[i + 1] == -100)]
        assert len(starts) == len(conv)
        for t, (s, a0) in enumerate(zip(conv, starts)):
            question = range(img0 + g * g if t == 0 else ends[t - 1] + 1, a0)
            words = [i for i in question if tokens[i] in _DESCRIPTOR_WORDS and tokens[i - 1] != "What"]
            relation = [i for i in question if tokens[i] in _RELATION_WORDS]
            split = relation[0] if relation else a0
            yield b, img0, s, a0, [i for i in words if i < split], [i for i in words if i > split]


#: The decoder layer after which the last prompt position must know the named attributes
#: (``DescriptionProbes``): the "words" heads of ``ATTENTION_PLAN`` read them at layers 1-2.
DESCRIPTION_LAYER = 2


class DescriptionProbes(torch.nn.Module):
    """Training-only linear read-outs of the last prompt position's hidden state after
    ``DESCRIPTION_LAYER``: the colour and shape the question names for the referred object and
    for a relation's anchor ("none" when not named; "any" for the word "shape"). Attending to the
    right words is not enough: a fresh head's output is ~1 % of the residual stream, and without
    this loss the answer position never learned what the question asked for (measured: a linear
    read-out of the named colour stayed at chance through every layer)."""

    FIELDS = ("color", "shape", "anchor_color", "anchor_shape")

    def __init__(self, hidden_size: int):
        super().__init__()
        sizes = {"color": len(synthetic.COLORS) + 1, "shape": len(synthetic.SHAPES) + 2}
        self.heads = torch.nn.ModuleDict({f: torch.nn.Linear(hidden_size, sizes[f.removeprefix("anchor_")]) for f in self.FIELDS})

    def loss(self, hidden: torch.Tensor, targets: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        rows, positions, labels = targets
        h = torch.nn.functional.rms_norm(hidden[rows, positions].float(), (hidden.shape[-1],))
        return torch.stack(
            [torch.nn.functional.cross_entropy(self.heads[f](h), labels[:, i]) for i, f in enumerate(self.FIELDS)]
        ).mean()


def description_targets(
    conversations: Sequence[Sequence[synthetic.Sample]], batch: dict, image_token_id: int, tokenizer
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows, last prompt positions, labels (M, 4))`` for ``DescriptionProbes``, one row per turn."""
    colors, shapes = list(synthetic.COLORS), list(synthetic.SHAPES)

    def attributes(words: list[str]) -> list[int]:
        color = next((colors.index(w) for w in words if w in colors), len(colors))
        nouns = [w.removesuffix("s") for w in words if w.removesuffix("s") in (*shapes, "shape")]
        shape = len(shapes) + 1 if not nouns else (len(shapes) if nouns[0] == "shape" else shapes.index(nouns[0]))
        return [color, shape]

    rows, positions, labels = [], [], []
    for b, _, _, a0, described, anchor_words in _turns(conversations, batch, image_token_id, tokenizer):
        ids = batch["input_ids"][b]
        rows.append(b)
        positions.append(a0 - 1)
        labels.append(
            attributes(tokenizer.convert_ids_to_tokens(ids[described].tolist()))
            + attributes(tokenizer.convert_ids_to_tokens(ids[anchor_words].tolist()))
        )
    return torch.tensor(rows), torch.tensor(positions), torch.tensor(labels)


def attention_targets(
    conversations: Sequence[Sequence[synthetic.Sample]], batch: dict, image_token_id: int, tokenizer
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Where each supervised head should look (see ``ATTENTION_PLAN``), per target name:
    ``(rows, query positions, key mask (M, L))``.

    ``words``: the last prompt position reads the words describing what the question is about
    (before the relation word, if any; never the question word "shape" of "What shape is");
    ``anchor_words``: the anchor's words, after the relation word. ``anchor``: for a relation, the
    last prompt position looks at the anchor object's patches. ``target``: for a question about one
    object (a box, its colour or shape), the last prompt position and the positions that predict
    the box's four coordinates look at that object's patches.
    """
    g = synthetic.GRID
    groups: dict[str, tuple[list, list, list]] = {name: ([], [], []) for name in ("words", "anchor_words", "anchor", "target")}

    def add(name: str, b: int, queries: Sequence[int], keys: Sequence[int]) -> None:
        if keys:
            for q in queries:
                groups[name][0].append(b)
                groups[name][1].append(q)
                groups[name][2].append(list(keys))

    def patches(img0: int, o: synthetic.SceneObject) -> list[int]:
        return [img0 + r * g + c for r in range(o.y, o.y + o.size) for c in range(o.x, o.x + o.size)]

    ids = batch["input_ids"]
    for b, img0, s, a0, described, anchor_words in _turns(conversations, batch, image_token_id, tokenizer):
        add("words", b, [a0 - 1], described)
        add("anchor_words", b, [a0 - 1], anchor_words)
        expr = s.meta.get("expr")
        if expr and expr["type"] == "relation":
            anchor = synthetic.referents(s.objects, expr["anchor"])
            add("anchor", b, [a0 - 1], patches(img0, s.objects[anchor[0]]))
        if s.target is not None:
            # labels[i] is the token at i, predicted by the logits at i - 1; "[ x1 , y1 , x2 , y2 ]"
            queries = [a0 - 1, a0, a0 + 2, a0 + 4, a0 + 6] if s.kind == "grounding" else [a0 - 1]
            add("target", b, queries, patches(img0, s.objects[s.target]))
    out = {}
    for name, (rows, positions, keys) in groups.items():
        mask = torch.zeros(len(rows), ids.shape[1], dtype=torch.bool)
        for m, k in enumerate(keys):
            mask[m, k] = True
        out[name] = (torch.tensor(rows, dtype=torch.long), torch.tensor(positions, dtype=torch.long), mask)
    return out


def _cosine(step: int, steps: int, warmup: int, peak: float, floor: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def lr_at(step: int, cfg: TrainConfig) -> float:
    return _cosine(step, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr_ratio)


def _param_groups(modules, weight_decay: float, qk_lr_scale: float = 1.0):
    """AdamW groups: no decay on biases, norms and embeddings; the decoder's query/key projections
    may take a larger step (``qk_lr_scale``): sharp content-based attention needs them to grow
    several times their initial scale, which Adam's bounded steps make the slowest thing to learn."""
    groups: dict[tuple[bool, bool], list] = {}
    seen = set()
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            decay = p.ndim >= 2 and "embed" not in name
            qk = "language_model" in name and ("q_proj" in name or "k_proj" in name)
            groups.setdefault((decay, qk), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0, "lr_scale": qk_lr_scale if qk else 1.0}
        for (decay, qk), params in groups.items()
    ]


def _fmt_metrics(m: dict) -> str:
    subs = " ".join(f"{k}={v['acc']:.2f}" for k, v in m["by_subtype"].items())
    return f"grounding_acc50={m['grounding_acc50']:.3f} miou={m['grounding_miou']:.3f} vqa_acc={m['vqa_acc']:.3f} [{subs}]"


def pretrain_vision(model, processor, probes: PatchProbes, cfg: TrainConfig, t0: float) -> None:
    """Stage 1 (like LLaVA's feature alignment, but dense): vision tower + projector + probes only."""
    modules = [model.model.vision_tower, model.model.multi_modal_projector, probes]
    opt = torch.optim.AdamW(_param_groups(modules, cfg.weight_decay), lr=cfg.vision_lr, betas=(0.9, 0.98))
    for step in range(cfg.vision_steps):
        for g in opt.param_groups:
            g["lr"] = _cosine(step, cfg.vision_steps, cfg.warmup_steps, cfg.vision_lr, cfg.min_lr_ratio) * g["lr_scale"]
        scenes = [
            synthetic.random_scene(
                random.Random(f"reroute-demo/vision/{cfg.seed}/{step * cfg.vision_batch_size + i}"), layout=cfg.layout
            )
            for i in range(cfg.vision_batch_size)
        ]
        pixels = processor.image_processor([synthetic.render(s) for s in scenes], return_tensors="pt")["pixel_values"]
        feats = _visual_tokens(model, pixels)
        loss = probes.loss(feats.reshape(-1, feats.shape[-1]), probe_targets(scenes))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for grp in opt.param_groups for p in grp["params"]], cfg.grad_clip)
        opt.step()
        if step % 25 == 0 or step == cfg.vision_steps - 1:
            log.info("vision step %4d/%d probe loss %.4f  %.0fs", step, cfg.vision_steps, loss.item(), time.time() - t0)


def train(cfg: TrainConfig, command: str | None = None) -> dict:
    """Train from scratch, evaluate on the held-out split, ``save_pretrained`` into ``cfg.output``."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    model, processor = modeling.build_model(cfg.seed)
    probes = PatchProbes(model.config.text_config.hidden_size)
    describe = DescriptionProbes(model.config.text_config.hidden_size)
    model.train()
    log.info(
        "model: %.2fM parameters, %d visual tokens/image; config %s",
        modeling.num_parameters(model) / 1e6,
        modeling.NUM_IMAGE_TOKENS,
        json.dumps(asdict(cfg)),
    )
    if cfg.vision_steps:
        pretrain_vision(model, processor, probes, cfg, t0)
    probe = AttentionProbe()
    if cfg.attn_weight > 0:
        probe.install(model)
    groups = _param_groups([model, probes, describe], cfg.weight_decay, cfg.qk_lr_scale)
    described: list[torch.Tensor] = []
    description_hook = model.model.language_model.layers[DESCRIPTION_LAYER].register_forward_hook(
        lambda module, args, output: described.append(output[0] if isinstance(output, tuple) else output)
    )
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)
    val = synthetic.make_dataset(cfg.eval_samples, cfg.seed, "val", layout=cfg.layout)
    history = []
    ema = None
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg) * g["lr_scale"]
        objects = (1, 3) if step < cfg.curriculum * cfg.steps else (synthetic.MIN_OBJECTS, synthetic.MAX_OBJECTS)
        convs = [
            synthetic.make_conversation(cfg.seed, "train", step * cfg.batch_size + i, cfg.turns, *objects, cfg.layout)
            for i in range(cfg.batch_size)
        ]
        batch = encode_conversations(processor, convs)
        feats = _visual_tokens(model, batch["pixel_values"])
        embeds = model.get_input_embeddings()(batch["input_ids"])
        is_visual = (batch["input_ids"] == model.config.image_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(is_visual, feats.reshape(-1, feats.shape[-1]).to(embeds.dtype))
        described.clear()
        lm_loss = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        description_loss = (
            describe.loss(described[0], description_targets(convs, batch, model.config.image_token_id, processor.tokenizer))
            if cfg.description_weight > 0
            else lm_loss * 0.0
        )
        probe_loss = (
            probes.loss(feats.reshape(-1, feats.shape[-1]), probe_targets([c[0].objects for c in convs]))
            if cfg.probe_weight > 0
            else lm_loss * 0.0
        )
        attn_loss = (
            probe.loss(attention_targets(convs, batch, model.config.image_token_id, processor.tokenizer))
            if cfg.attn_weight > 0
            else lm_loss * 0.0
        )
        loss = lm_loss + cfg.probe_weight * probe_loss + cfg.attn_weight * attn_loss + cfg.description_weight * description_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 25 == 0 or step == cfg.steps - 1:
            log.info(
                "step %5d/%d loss %.4f (ema %.4f; lm %.4f probe %.4f attn %.4f described %.4f) lr %.2e  %.0fs",
                step, cfg.steps, loss.item(), ema, lm_loss.item(), probe_loss.item(), attn_loss.item(), description_loss.item(),
                lr_at(step, cfg), time.time() - t0,
            )
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0) and step + 1 < cfg.steps:
            _, m = evaluate(model, processor, val, cfg.eval_batch_size)
            history.append({"step": step + 1, "loss_ema": ema, **m})
            log.info("eval @%d (val, %d samples): %s", step + 1, len(val), _fmt_metrics(m))
            if cfg.checkpoint:
                model.set_attn_implementation("sdpa")
                model.save_pretrained(Path(cfg.output) / "checkpoint")
                if cfg.attn_weight > 0:
                    probe.install(model)
    description_hook.remove()
    train_time = time.time() - t0
    model.set_attn_implementation("sdpa")
    model.eval()
    test = synthetic.make_dataset(cfg.test_samples, cfg.seed, "test", layout=cfg.layout)
    _, metrics = evaluate(model, processor, test, cfg.eval_batch_size)
    log.info("final test (%d samples): %s", len(test), _fmt_metrics(metrics))
    total_time = time.time() - t0

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
