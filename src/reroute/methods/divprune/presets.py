"""The ``divprune`` / ``divprune_reroute`` presets (docs/semantics.md §22, `reroute.methods.stage_presets`)."""

from reroute.budgets.presets import register_preset
from reroute.methods.divprune.parts import divprune_refusal
from reroute.methods.stage_presets import StagePreset

DIVPRUNE = register_preset(StagePreset("divprune", "divprune", "remove", divprune_refusal, counterpart="divprune_reroute"))
DIVPRUNE_REROUTE = register_preset(StagePreset("divprune_reroute", "divprune", "reroute", divprune_refusal))
#: the presets this folder registers
DIVPRUNE_PRESETS: tuple[str, ...] = (DIVPRUNE.name, DIVPRUNE_REROUTE.name)
