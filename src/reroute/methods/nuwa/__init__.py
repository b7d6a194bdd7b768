"""Nüwa (arXiv 2602.02951; docs/semantics.md §6): a vision-side stage 1, stage-2 scorers and presets.

Stage 1 (before the decoder): ``nuwa_llava_stage1`` / ``nuwa_qwen_stage1`` give, per image,
the kept raster indices and the decoder-ready tokens. Stage 2 (at a decoder decision
layer): ``llava_stage2_scores`` / ``qwen_stage2_scores``, with the arguments of
``reroute.methods.attention.last_token_attention``. docs/nuwa.md explains the choices.
"""

from reroute.methods.nuwa.aggregate import aggregate_anchors, high_saliency, llava_radius, merge_weights, qwen_radius
from reroute.methods.nuwa.features import VisionFeatures, llava_vision_features, qwen_vision_features
from reroute.methods.nuwa.params import LLAVA_TIERS, QWEN_RATIOS, NuwaParams, NuwaRatios, llava_params, qwen_ratios
from reroute.methods.nuwa.scoring import llava_stage2_scores, qwen_stage2_scores
from reroute.methods.nuwa.select import cell_candidates, select_anchors
from reroute.methods.nuwa.stage1 import Stage1Image, nuwa_llava_stage1, nuwa_qwen_stage1, reduce_image

# the registered parts (the `nuwa` vision stage, the `nuwa_llava` / `nuwa_qwen` scorers) and presets
from reroute.methods.nuwa import parts as _parts  # noqa: E402, F401  isort: skip
from reroute.methods.nuwa import presets as _presets  # noqa: E402, F401  isort: skip

__all__ = [
    "LLAVA_TIERS",
    "QWEN_RATIOS",
    "NuwaParams",
    "NuwaRatios",
    "Stage1Image",
    "VisionFeatures",
    "aggregate_anchors",
    "cell_candidates",
    "high_saliency",
    "llava_params",
    "llava_radius",
    "llava_stage2_scores",
    "llava_vision_features",
    "merge_weights",
    "nuwa_llava_stage1",
    "nuwa_qwen_stage1",
    "qwen_radius",
    "qwen_ratios",
    "qwen_stage2_scores",
    "qwen_vision_features",
    "reduce_image",
    "select_anchors",
]
