"""DivPrune (CVPR 2025, arXiv 2503.02175; docs/semantics.md §22): max-min diversity selection of the
projected visual tokens before the decoder, as a vision stage, and its presets.

- ``vision_stage="divprune"`` (`parts`): each image keeps ``K = round(N f)`` of its tokens, picked by
  `divprune_select`, at their original prompt positions.
- presets ``divprune`` (the stage alone, as published: ``K`` = the tier) and ``divprune_reroute``
  (the stage, then reroute decisions at the same avg_T; `reroute.methods.stage_presets`).
"""

from reroute.methods.divprune.select import cosine_distances, divprune_select

# the registered stage and presets
from reroute.methods.divprune import parts as _parts  # noqa: E402, F401  isort: skip
from reroute.methods.divprune import presets as _presets  # noqa: E402, F401  isort: skip

__all__ = ["cosine_distances", "divprune_select"]
