"""Supervised attention for stage 2: which head should look where (``ATTENTION_PLAN``), the
training-only attention function that scores it without eager attention (``AttentionProbe``),
and the per-batch targets (``attention_targets``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reroute.demo import synthetic
from reroute.demo.training.data import question_turns

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
    for b, img0, s, a0, described, anchor_words in question_turns(conversations, batch, image_token_id, tokenizer):
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
