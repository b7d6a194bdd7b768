"""SparseVLM (ICML 2025, arXiv 2410.04417): text raters score the visual tokens at three layers.

The visually relevant text tokens ("raters", chosen once from the decoder's input) rate the
visual tokens with their attention rows; the lowest-rated are removed after layers 2, 6 and 15
of LLaVA-1.5. `sparsevlm` follows SparseVLM+ (v2.0, the official main branch): no recycling of
the pruned tokens, positions kept, rotary "gravity" correction and head selection;
`sparsevlm_v15` follows v1.5: its rule and its recycling of pruned tokens into merged ones, with
renumbered positions (docs/semantics.md §21 lists the versions and where paper and code differ).

- `raters`: the rater selection; `scoring`: the raters' rows, gravity correction, head selection;
- `recycle`: v1.5's recycling math (which pruned tokens, density-peak clustering and merge);
- `parts`: the `sparsevlm` and `sparsevlm_v15` scorers; `presets`: `sparsevlm`,
  `reroute_vs_sparsevlm`, `sparsevlm_v15` and `reroute_vs_sparsevlm_v15`.
"""

from reroute.methods.sparsevlm import parts, presets  # noqa: F401  (registers the scorer and presets)
from reroute.methods.sparsevlm.parts import SparseVLMScorer
from reroute.methods.sparsevlm.presets import SPARSEVLM_PRESETS

__all__ = ["SPARSEVLM_PRESETS", "SparseVLMScorer"]
