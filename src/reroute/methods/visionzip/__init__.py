"""VisionZip (CVPR 2025, arXiv 2412.04467; docs/semantics.md §22): dominant tokens by the CLIP tower's CLS
attention plus contextual tokens merged from the rest, before the decoder, as a vision stage, and its presets.

- ``vision_stage="visionzip"`` (`parts`): LLaVA-1.5 only (a CLS token is needed).
- presets ``visionzip`` (the stage alone: ``K`` = the tier) and ``visionzip_reroute`` (the stage,
  then reroute decisions at the same avg_T; `reroute.methods.stage_presets`).
"""

from reroute.methods.visionzip.select import TowerInputs, cls_attention_and_keys, tower_inputs, visionzip_select

# the registered stage and presets
from reroute.methods.visionzip import parts as _parts  # noqa: E402, F401  isort: skip
from reroute.methods.visionzip import presets as _presets  # noqa: E402, F401  isort: skip

__all__ = ["TowerInputs", "cls_attention_and_keys", "tower_inputs", "visionzip_select"]
