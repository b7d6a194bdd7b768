"""Pure metric functions of the benchmarks (no files, no models): parsing answers and scoring them.

One module per benchmark family (`rec`, `pope`, `gqa`, `mme`, `mmbench`) plus `intervals`
(Wilson and bootstrap 95 % intervals). Conventions where the benchmarks are silent are in
docs/semantics.md §9 (the headline reads answers as the paper's harness; `careful/` metrics are reroute's reading).
"""

from reroute.eval.metrics.intervals import bootstrap, from_draws, mean_interval, proportion, wilson

__all__ = ["bootstrap", "from_draws", "mean_interval", "proportion", "wilson"]
