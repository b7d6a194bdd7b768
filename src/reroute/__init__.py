"""reroute: recoverable visual-token routing for HuggingFace vision-language models.

Public interface (docs/semantics.md §8): `RoutingConfig`, `apply`, `preset`, `cost`.
"""

from reroute.config import RoutingConfig
from reroute import methods as _methods  # noqa: F401  the method folders register their parts and presets
from reroute.apply import RoutingHandle, apply
from reroute.budgets import preset
from reroute.budgets.cost import cost

__all__ = ["RoutingConfig", "RoutingHandle", "apply", "preset", "cost"]
__version__ = "0.1.0"
