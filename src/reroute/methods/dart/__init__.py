"""DART (arXiv 2502.11494): duplication with pivot tokens, one removal at layer 2 (docs/semantics.md §20).

``dart`` removes as the official code does; ``reroute_vs_dart`` reroutes at 2, 7, 15, 23 with the
same ratio at each decision (the ``reroute_vs_fastv`` pattern), so the pair runs at one avg_T.
"""

from reroute.budgets.presets import PresetSpec, register_preset
from reroute.methods.dart.scorer import DartScorer

# The official scripts' budgets (--max_num_trunction 192 / 128 / 64 with 4 + 4 pivots) retain
# 4 + 8 * (M // 8) tokens from layer 2 on: 196, 132, 68 of 576. They count tokens kept after the
# pruning layer, not avg_T: continuous avg_T 219.8, 159.8, 99.8 (ratios="solved" hits the tier).
_PAPER = {192: (196 / 576,), 128: (132 / 576,), 64: (68 / 576,)}

DART = register_preset(
    PresetSpec("dart", "remove", (2,), "constant", _PAPER, counterpart="reroute_vs_dart", scorer=DartScorer.name)
)
REROUTE_VS_DART = register_preset(
    PresetSpec(
        "reroute_vs_dart",
        "reroute",
        (2, 7, 15, 23),
        "constant",
        {tier: ratios * 4 for tier, ratios in _PAPER.items()},
        scorer=DartScorer.name,
    )
)

__all__ = ["DART", "REROUTE_VS_DART", "DartScorer"]
