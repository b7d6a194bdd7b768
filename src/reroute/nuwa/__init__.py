"""Nüwa (arXiv 2602.02951; SPEC §6): a vision-side stage 1 and a stage-2 scoring rule.

Stage 1 (before the decoder): ``nuwa_llava_stage1`` / ``nuwa_qwen_stage1`` give, per image,
the kept raster indices and the decoder-ready tokens. Stage 2 (at a decoder decision
layer): ``llava_stage2_scores`` / ``qwen_stage2_scores``, with the arguments of
``reroute.scoring.last_token_attention``. docs/nuwa.md explains the choices.
"""

from reroute.nuwa.aggregate import aggregate_anchors, high_saliency, llava_radius, merge_weights, qwen_radius
from reroute.nuwa.features import VisionFeatures, llava_vision_features, qwen_vision_features
from reroute.nuwa.params import LLAVA_TIERS, QWEN_RATIOS, NuwaParams, NuwaRatios, llava_params, qwen_ratios
from reroute.nuwa.place import place_stage1
from reroute.nuwa.scoring import llava_stage2_scores, qwen_stage2_scores
from reroute.nuwa.select import cell_candidates, select_anchors
from reroute.nuwa.stage1 import Stage1Image, nuwa_llava_stage1, nuwa_qwen_stage1, reduce_image

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
    "place_stage1",
    "qwen_radius",
    "qwen_ratios",
    "qwen_stage2_scores",
    "qwen_vision_features",
    "reduce_image",
    "select_anchors",
]
