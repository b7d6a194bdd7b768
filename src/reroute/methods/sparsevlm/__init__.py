"""SparseVLM (ICML 2025, arXiv 2410.04417): text raters score the visual tokens at three layers.

The visually relevant text tokens ("raters", chosen once from the decoder's input) rate the
visual tokens with their attention rows; the lowest-rated are removed after layers 2, 6 and 15
of LLaVA-1.5. This folder follows SparseVLM+ (v2.0, the official main branch): no recycling of
the pruned tokens, positions kept, rotary "gravity" correction and head selection
(docs/semantics.md §21 lists the versions and where paper and code differ).

- `raters`: the rater selection; `scoring`: the raters' rows, gravity correction, head selection;
- `parts`: the `sparsevlm` scorer; `presets`: `sparsevlm` and `reroute_vs_sparsevlm`;
- `recycle`: v1.5's recycling of pruned tokens into merged ones (the tensor math, per sample; no
  preset runs it, docs/semantics.md §21).
"""

from reroute.methods.sparsevlm import parts, presets  # noqa: F401  (registers the scorer and presets)
from reroute.methods.sparsevlm.parts import SparseVLMScorer
from reroute.methods.sparsevlm.presets import SPARSEVLM_PRESETS

__all__ = ["SPARSEVLM_PRESETS", "SparseVLMScorer"]
