"""V2Drop (arXiv 2509.01552): progressively drop the visual tokens that vary least (docs/semantics.md §20).

The official LLaVA-1.5 code decides at layers 3, 17 and 22, keeping half of the current tokens, half
again, then one: 576 -> 288 -> 144 -> 1 (continuous avg_T 202.8). The presets keep those layers and
that shape (``geometric_then_one``: ``p``, ``p^2``, one token) and solve ``p`` for each tier;
``reroute_vs_v2drop`` runs the same per-layer counts with the ``reroute`` action.
"""

from reroute.budgets.presets import PresetSpec, register_preset
from reroute.budgets.shapes import ONE_TOKEN
from reroute.methods.v2drop.scorer import V2DropScorer

# The code publishes one LLaVA-1.5 setting (p = 0.5, avg_T 202.8), the paper's 192 tier.
_PAPER = {192: (0.5, 0.25, ONE_TOKEN)}

V2DROP = register_preset(
    PresetSpec(
        "v2drop",
        "remove",
        (3, 17, 22),
        "geometric_then_one",
        _PAPER,
        counterpart="reroute_vs_v2drop",
        scorer=V2DropScorer.name,
    )
)
REROUTE_VS_V2DROP = register_preset(
    PresetSpec("reroute_vs_v2drop", "reroute", (3, 17, 22), "geometric_then_one", _PAPER, scorer=V2DropScorer.name)
)

__all__ = ["REROUTE_VS_V2DROP", "V2DROP", "V2DropScorer"]
