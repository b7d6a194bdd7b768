"""Budgets: how many visual tokens each layer sees, and what that costs (docs/semantics.md §1, §4, §7).

- `counts`: avg_T and per-layer visual counts of a schedule;
- `shapes`: schedule shapes, keep ratios as a function of one parameter;
- `solver`: the ratios of a shape that hit a target avg_T exactly;
- `depth`: published decision layers scaled to another decoder depth;
- `presets`: the preset registry's front (`preset`), filled by the method folders;
- `cost`: FLOPs and KV-cache bytes of a config (`reroute.cost`).
"""

from reroute.budgets.counts import REFERENCE_NUM_VISUAL, avg_t, schedule_avg_t, visual_counts
from reroute.budgets.depth import REFERENCE_NUM_LAYERS, num_decoder_layers, resolve_depth, scale_decision_layers
from reroute.budgets.presets import PAPER_TIERS, PresetSpec, counterparts, preset, preset_names, register_preset
from reroute.budgets.shapes import SCHEDULE_SHAPES, constant_shape, geometric_shape, halving_shape
from reroute.budgets.solver import Solution, solve

__all__ = [
    "PAPER_TIERS",
    "REFERENCE_NUM_LAYERS",
    "REFERENCE_NUM_VISUAL",
    "SCHEDULE_SHAPES",
    "PresetSpec",
    "Solution",
    "avg_t",
    "constant_shape",
    "counterparts",
    "geometric_shape",
    "halving_shape",
    "num_decoder_layers",
    "preset",
    "preset_names",
    "register_preset",
    "resolve_depth",
    "scale_decision_layers",
    "schedule_avg_t",
    "solve",
    "visual_counts",
]
