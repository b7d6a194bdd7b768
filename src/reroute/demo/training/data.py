"""Training batches: multi-turn conversations encoded as the processor would, and where each turn's
question words and answer lie in such a batch (what the supervision losses point at)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from reroute.demo import modeling, synthetic


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


_DESCRIPTOR_WORDS = frozenset(
    [*synthetic.COLORS, *synthetic.OBJECT_SHAPES, *(s + "s" for s in synthetic.OBJECT_SHAPES), "shape", "shapes", *synthetic.SUPERLATIVES]
)
_RELATION_WORDS = frozenset(r.split()[0] for r in synthetic.RELATIONS)  # "left", "right", "above", "below"


def question_turns(
    conversations: Sequence[Sequence[synthetic.Sample]], batch: dict, image_token_id: int, tokenizer
) -> Iterator[tuple[int, int, synthetic.Sample, int, list[int], list[int]]]:
    """Yield ``(row, first image position, sample, answer start, described words, anchor words)`` for
    every turn of every conversation of a batch from ``encode_conversations``; the word lists are
    token positions in that turn's question: the descriptors before the relation word (never
    "shape" in "What shape is"), and after it."""
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
