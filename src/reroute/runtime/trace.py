"""What a routed forward decided, per sample: for users, tests, cost reports and pictures."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class DecisionScores:
    """The candidates of one decision and their scores; recorded only on request
    (``reroute.apply(model, config, record_scores=True)``), so a plain run pays nothing.

    positions: ``(n,)`` long, CPU: the candidates' original prompt positions, increasing.
    scores: ``(n,)`` float32, CPU: each candidate's score (docs/semantics.md §2: the last prompt token's
        head-mean attention over the decision's keys, which include text tokens, so the
        candidates' scores need not sum to 1).
    """

    positions: torch.Tensor
    scores: torch.Tensor


@dataclass(frozen=True)
class SampleTrace:
    """Decisions of one sample of a batch.

    routed: False when the prompt had no visual token (the sample ran unrouted).
    num_visual: visual tokens in the prompt (``N_vis``).
    visual_per_layer: visual tokens taking part in each decoder layer (queries and keys).
    tokens_per_layer: all tokens (text, visual and padding) each layer ran on.
    selected: per decision, the original positions of the visual tokens selected there.
    scores: per decision, the candidates and their scores (`DecisionScores`) when the handle
        records scores; None otherwise.
    """

    routed: bool
    num_visual: int
    visual_per_layer: tuple[int, ...]
    tokens_per_layer: tuple[int, ...]
    selected: tuple[tuple[int, ...], ...]
    scores: tuple[DecisionScores, ...] | None = field(default=None, compare=False, repr=False)

    @property
    def avg_T(self) -> float:  # noqa: N802 - the paper's name
        """Mean over all decoder layers of the visual tokens taking part (docs/semantics.md §1)."""
        return sum(self.visual_per_layer) / len(self.visual_per_layer)


@dataclass(frozen=True)
class Trace:
    """The decisions of the last routed prefill.

    action, decision_layers: the configuration that ran.
    samples: one ``SampleTrace`` per sample of the batch.
    cache_lengths: per layer, the length of that layer's KV cache after prefill (the batch's
        longest active set: shorter samples are padded with masked slack).
    note: what else the call did that the counts do not show (empty when nothing): e.g. that
        the visual positions could not be known so the call ran unrouted.
    """

    action: str
    decision_layers: tuple[int, ...]
    samples: tuple[SampleTrace, ...]
    cache_lengths: tuple[int, ...]
    note: str = ""

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> SampleTrace:
        return self.samples[index]

    @property
    def avg_T(self) -> float:  # noqa: N802
        """Mean avg_T over the routed samples of the batch (0 when none was routed)."""
        routed = [s.avg_T for s in self.samples if s.routed]
        return sum(routed) / len(routed) if routed else 0.0

    def summary(self) -> str:
        lines = [f"{self.action} at layers {list(self.decision_layers)}"]
        if self.note:
            lines.append(f"  note: {self.note}")
        for b, s in enumerate(self.samples):
            if not s.routed:
                lines.append(f"  sample {b}: no visual tokens, ran unrouted")
            else:
                lines.append(
                    f"  sample {b}: N_vis={s.num_visual} avg_T={s.avg_T:.1f} visual per layer={list(s.visual_per_layer)}"
                )
        return "\n".join(lines)
