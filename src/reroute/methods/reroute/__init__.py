"""Reroute (arXiv 2606.12412): the ``reroute`` action under the budget of a removal method.

The action itself is built in (`reroute.methods.action.Reroute`, docs/semantics.md §3); this
folder holds the paper's schedules, each matching its removal baseline's per-layer budget:
``reroute_vs_fastv`` (FastV's ratio at four decisions) and ``reroute_vs_pdrop`` (shape a, a, a/2,
a/4). Nüwa's counterpart, ``nuwa_reroute``, lives with Nüwa (`reroute.methods.nuwa`).
"""

from reroute.budgets.presets import PresetSpec, register_preset

REROUTE_VS_FASTV = register_preset(
    PresetSpec(
        "reroute_vs_fastv",
        "reroute",
        (3, 7, 15, 23),
        "constant",
        {192: (0.2644,) * 4, 128: (0.1418,) * 4, 64: (0.01916,) * 4},
    )
)
REROUTE_VS_PDROP = register_preset(
    PresetSpec(
        "reroute_vs_pdrop",
        "reroute",
        (2, 7, 15, 23),
        "halving",
        {
            192: (0.4502, 0.4502, 0.2251, 0.1126),
            128: (0.2655, 0.2655, 0.1328, 0.0664),
            64: (0.1392, 0.1392, 0.0696, 0.0348),  # avg_T 84.2, not 64
        },
    )
)
