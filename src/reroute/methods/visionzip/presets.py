"""The ``visionzip`` / ``visionzip_reroute`` presets (docs/semantics.md §22, `reroute.methods.stage_presets`)."""

from reroute.budgets.presets import register_preset
from reroute.methods.stage_presets import StagePreset
from reroute.methods.visionzip.parts import visionzip_refusal

VISIONZIP = register_preset(StagePreset("visionzip", "visionzip", "remove", visionzip_refusal, counterpart="visionzip_reroute"))
VISIONZIP_REROUTE = register_preset(StagePreset("visionzip_reroute", "visionzip", "reroute", visionzip_refusal))
#: the presets this folder registers
VISIONZIP_PRESETS: tuple[str, ...] = (VISIONZIP.name, VISIONZIP_REROUTE.name)
