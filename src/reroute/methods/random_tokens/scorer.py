"""The seeded random scorer (docs/semantics.md §20): a per-sample draw, the same in any batch."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from reroute.methods.scorer import Scorer, ScoringInputs, register_scorer

# odd multipliers that spread (seed, decision, prompt length) over a 63-bit generator seed
_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def draw_seed(seed: int, decision: int, sample_length: int) -> int:
    """The generator seed of one sample's draw at one decision: a function of per-sample numbers only."""
    value = 0
    for part, mix in zip((seed, decision, sample_length), _MIX):
        value = ((value ^ part) * mix) % (1 << 64)
    return value % (1 << 63)


def draw(seed: int, decision: int, sample_length: int, count: int) -> torch.Tensor:
    """``count`` uniform scores, the i-th for the sample's i-th visual token (CPU generator: any device agrees)."""
    generator = torch.Generator().manual_seed(draw_seed(seed, decision, sample_length))
    return torch.rand(count, generator=generator)


@register_scorer
class RandomScorer(Scorer):
    """Each visual token gets a uniform score keyed by the seed, the decision, the sample's prompt
    length and the token's index among the sample's visual tokens (never the batch row)."""

    name = "random"
    query_rows = 0
    projects_keys = False
    params = {"seed": 0}

    def check_params(self, params: Mapping[str, float]) -> None:
        super().check_params(params)
        seed = self.resolved(params)["seed"]
        if seed != int(seed) or seed < 0:
            raise ValueError(f"scorer 'random' takes a whole seed >= 0, got {seed!r}")

    def score(self, inputs: ScoringInputs) -> torch.Tensor:
        seed = int(inputs.params["seed"])
        scores = torch.full(inputs.visual.shape, -1.0)
        for b in range(inputs.visual.shape[0]):
            where = torch.nonzero(inputs.visual[b].cpu()).flatten()
            scores[b, where] = draw(seed, inputs.decision, int(inputs.sample_length[b]), len(where))
        return scores.to(inputs.hidden.device)
