"""reroute: recoverable visual-token routing for HuggingFace vision-language models.

Public interface (SPEC §8): `RoutingConfig`, `apply`, `preset`, `cost`.
"""

from reroute.config import RoutingConfig
from reroute.apply import RoutingHandle, apply
from reroute.budget import preset
from reroute.cost import cost

__all__ = ["RoutingConfig", "RoutingHandle", "apply", "preset", "cost"]
__version__ = "0.1.0"
