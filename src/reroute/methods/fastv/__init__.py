"""FastV (ECCV 2024): one decision at layer 3 by the last prompt token's attention, removing the rest.

Its scoring rule is the built-in ``last_token`` scorer (docs/semantics.md §2) and its action the
built-in ``remove``; this folder holds its published schedule (docs/semantics.md §4).
"""

from reroute.budgets.presets import PresetSpec, register_preset

FASTV = register_preset(
    PresetSpec(
        "fastv",
        "remove",
        (3,),
        "constant",
        {192: (0.2644,), 128: (0.1418,), 64: (0.01916,)},
        counterpart="reroute_vs_fastv",
    )
)
