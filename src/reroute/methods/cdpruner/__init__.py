"""CDPruner (arXiv 2506.10967; docs/semantics.md §22): a conditional DPP over the visual tokens, relevance to
the instruction against similarity to each other.

The selection is here (`dpp`: `instruction_relevance`, `conditional_kernel`, `dpp_select`,
`cdpruner_select`); the vision stage ``cdpruner`` refuses every model in one line (`parts`: the
instruction embedding needs CLIP's text tower, which no supported model holds), so no preset is
registered.
"""

from reroute.methods.cdpruner.dpp import cdpruner_select, conditional_kernel, dpp_select, instruction_relevance

# the registered (refusing) stage
from reroute.methods.cdpruner import parts as _parts  # noqa: E402, F401  isort: skip

__all__ = ["cdpruner_select", "conditional_kernel", "dpp_select", "instruction_relevance"]
