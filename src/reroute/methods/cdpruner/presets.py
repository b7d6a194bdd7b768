"""The ``cdpruner`` / ``cdpruner_reroute`` presets (docs/semantics.md §22, `reroute.methods.stage_presets`)."""

from reroute.budgets.presets import register_preset
from reroute.methods.cdpruner.parts import cdpruner_refusal
from reroute.methods.stage_presets import StagePreset

CDPRUNER = register_preset(StagePreset("cdpruner", "cdpruner", "remove", cdpruner_refusal, counterpart="cdpruner_reroute"))
CDPRUNER_REROUTE = register_preset(StagePreset("cdpruner_reroute", "cdpruner", "reroute", cdpruner_refusal))
#: the presets this folder registers
CDPRUNER_PRESETS: tuple[str, ...] = (CDPRUNER.name, CDPRUNER_REROUTE.name)
