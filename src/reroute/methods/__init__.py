"""A method is parts: a scoring rule x a schedule x an action, plus an optional vision-side stage.

- `Scorer` (`reroute.methods.scorer`): which visual tokens matter at a decision.
- `Action` (`reroute.methods.action`): what happens to the others (remove, reroute).
- `VisionStage` (`reroute.methods.vision_stage`): a reduction before the decoder (Nüwa's stage 1).
- The schedule (decision layers, keep ratios) is `RoutingConfig` itself, built by `reroute.budgets`.

Each kind has a registry; `RoutingConfig` names its parts and is validated against them, and
the engine, config and cost consult the registered objects. Adding a scorer or an action is
one module with a registered subclass; see docs/methods.md.
"""

from reroute.methods.action import ACTIONS, Action, get_action, register_action
from reroute.methods.scorer import SCORERS, Scorer, ScoringInputs, get_scorer, register_scorer
from reroute.methods.vision_stage import (
    VISION_STAGES,
    StageImage,
    VisionStage,
    get_vision_stage,
    register_vision_stage,
)

# one folder per method, each registering its parts and presets on import (in the order the
# presets are listed everywhere: the removal baselines, Reroute's counterparts, then Nüwa's pair)
from reroute.methods import fastv as _fastv  # noqa: E402, F401  isort: skip
from reroute.methods import pdrop as _pdrop  # noqa: E402, F401  isort: skip
from reroute.methods import reroute as _reroute  # noqa: E402, F401  isort: skip
from reroute.methods import nuwa as _nuwa  # noqa: E402, F401  isort: skip
from reroute.methods import random_tokens as _random_tokens  # noqa: E402, F401  isort: skip
from reroute.methods import dart as _dart  # noqa: E402, F401  isort: skip
from reroute.methods import v2drop as _v2drop  # noqa: E402, F401  isort: skip
from reroute.methods import sparsevlm as _sparsevlm  # noqa: E402, F401  isort: skip
from reroute.methods import divprune as _divprune  # noqa: E402, F401  isort: skip
from reroute.methods import visionzip as _visionzip  # noqa: E402, F401  isort: skip
from reroute.methods import cdpruner as _cdpruner  # noqa: E402, F401  isort: skip

__all__ = [
    "ACTIONS",
    "Action",
    "SCORERS",
    "Scorer",
    "ScoringInputs",
    "StageImage",
    "VISION_STAGES",
    "VisionStage",
    "get_action",
    "get_scorer",
    "get_vision_stage",
    "register_action",
    "register_scorer",
    "register_vision_stage",
]
