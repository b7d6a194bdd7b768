"""PyramidDrop (CVPR 2025): FastV's scoring rule at four decision layers, removing geometrically more.

Scorer ``last_token`` and action ``remove`` (monotone: only survivors compete); this folder holds
its published schedule (docs/semantics.md §4).
"""

from reroute.budgets.presets import PresetSpec, register_preset

PDROP = register_preset(
    PresetSpec(
        "pdrop",
        "remove",
        (2, 7, 15, 23),
        "geometric",
        {
            192: (0.5965, 0.3558, 0.2123, 0.1266),
            128: (0.4570, 0.2088, 0.0954, 0.0436),
            64: (0.2789, 0.0937, 0.0315, 0.0106),  # not of the geometric shape; avg_T 80.8, not 64
        },
        counterpart="reroute_vs_pdrop",
    )
)
