"""CDPruner (arXiv 2506.10967; docs/semantics.md §22): a conditional DPP over each image's projected
tokens, their relevance to the instruction against their similarity to each other, as a vision stage.

- the selection (`dpp`): `instruction_relevance`, `conditional_kernel`, `dpp_select`, `cdpruner_select`;
- ``vision_stage="cdpruner"`` (`parts`): each image keeps ``K = round(N f)`` tokens, conditioned on its
  prompt's instruction, at their original prompt positions: in CLIP's space as published when
  `reroute.apply` is given a `ClipRelevance` (`clip`), else in the decoder's embedding space;
- presets ``cdpruner`` (the stage alone: ``K`` = the tier) and ``cdpruner_reroute`` (the stage, then
  reroute decisions at the same avg_T; `reroute.methods.stage_presets`).
"""

from reroute.methods.cdpruner.clip import ClipRelevance
from reroute.methods.cdpruner.dpp import cdpruner_select, conditional_kernel, dpp_select, instruction_relevance

# the registered stage and presets
from reroute.methods.cdpruner import parts as _parts  # noqa: E402, F401  isort: skip
from reroute.methods.cdpruner import presets as _presets  # noqa: E402, F401  isort: skip

__all__ = ["ClipRelevance", "cdpruner_select", "conditional_kernel", "dpp_select", "instruction_relevance"]
