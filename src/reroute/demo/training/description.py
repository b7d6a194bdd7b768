"""The description read-out for stage 2: the last prompt position must know which colour and
shape the question names (``DescriptionProbes``, after ``DESCRIPTION_LAYER``), and its per-batch
targets (``description_targets``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reroute.demo import synthetic
from reroute.demo.training.data import question_turns

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
        sizes = {"color": len(synthetic.COLORS) + 1, "shape": len(synthetic.OBJECT_SHAPES) + 2}
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
    colors, shapes = list(synthetic.COLORS), list(synthetic.OBJECT_SHAPES)

    def attributes(words: list[str]) -> list[int]:
        color = next((colors.index(w) for w in words if w in colors), len(colors))
        nouns = [w.removesuffix("s") for w in words if w.removesuffix("s") in (*shapes, "shape")]
        shape = len(shapes) + 1 if not nouns else (len(shapes) if nouns[0] == "shape" else shapes.index(nouns[0]))
        return [color, shape]

    rows, positions, labels = [], [], []
    for b, _, _, a0, described, anchor_words in question_turns(conversations, batch, image_token_id, tokenizer):
        ids = batch["input_ids"][b]
        rows.append(b)
        positions.append(a0 - 1)
        labels.append(
            attributes(tokenizer.convert_ids_to_tokens(ids[described].tolist()))
            + attributes(tokenizer.convert_ids_to_tokens(ids[anchor_words].tolist()))
        )
    return torch.tensor(rows), torch.tensor(positions), torch.tensor(labels)
