"""Random: the baseline every reviewer asks for (docs/semantics.md §20).

A seeded draw ranks the visual tokens; the schedule is FastV's (one ``remove`` decision at layer
3) and the rerouted counterpart's is ``reroute_vs_fastv``'s (decisions at 3, 7, 15, 23 at the same
ratio), so the pair runs at one avg_T. The package is not called ``random`` so that it does not
shadow the standard library inside it; the registered names are ``random`` and ``reroute_vs_random``.
"""

from reroute.budgets.presets import PresetSpec, register_preset
from reroute.methods.random_tokens.scorer import RandomScorer

# FastV's published ratios (docs/semantics.md §4): a random draw has no paper schedule of its own
_FASTV_RATIOS = {192: (0.2644,), 128: (0.1418,), 64: (0.01916,)}

RANDOM = register_preset(
    PresetSpec(
        "random", "remove", (3,), "constant", _FASTV_RATIOS, counterpart="reroute_vs_random", scorer=RandomScorer.name
    )
)
REROUTE_VS_RANDOM = register_preset(
    PresetSpec(
        "reroute_vs_random",
        "reroute",
        (3, 7, 15, 23),
        "constant",
        {tier: ratios * 4 for tier, ratios in _FASTV_RATIOS.items()},
        scorer=RandomScorer.name,
    )
)

__all__ = ["RANDOM", "REROUTE_VS_RANDOM", "RandomScorer"]
