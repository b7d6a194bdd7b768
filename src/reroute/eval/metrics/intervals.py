"""95 % intervals for evaluation metrics: Wilson for proportions, a seeded bootstrap otherwise.

Every metric of `reroute.eval` is reported as a `Metric` (value, low, high, n). Proportions
(accuracies, precision, recall) use the Wilson score interval, which stays inside [0, 1] and
behaves at 0 % and 100 %; statistics that are not a count over a fixed denominator (mean IoU,
F1, MME's summed scores) use a percentile bootstrap with a fixed seed, so two runs over the
same records report the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from reroute.eval.task import Metric

Z_95 = 1.959963984540054  # two-sided 95 % normal quantile
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0

NAN = float("nan")


def empty_metric() -> Metric:
    """What a metric over no samples reports: NaN value and bounds, n = 0."""
    return Metric(NAN, NAN, NAN, 0)


def wilson(successes: int, n: int, z: float = Z_95) -> Metric:
    """The proportion ``successes / n`` with its Wilson score interval."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson needs 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return empty_metric()
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Clamp rounding noise: the exact bounds lie in [0, 1] and include p.
    return Metric(p, max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)), n)


def proportion(flags: Sequence[bool]) -> Metric:
    """The fraction of true ``flags`` with its Wilson interval."""
    return wilson(int(sum(bool(f) for f in flags)), len(flags))


def bootstrap(
    statistic: Callable[[np.ndarray], float],
    n: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> Metric:
    """``statistic`` over all ``n`` units, with a percentile bootstrap interval.

    ``statistic`` receives an integer index array (the units of one resample, drawn with
    replacement; ``np.arange(n)`` for the point value) and returns a float.
    """
    if n == 0:
        return empty_metric()
    rng = np.random.default_rng(seed)
    draws = [statistic(rng.integers(0, n, size=n)) for _ in range(resamples)]
    return from_draws(float(statistic(np.arange(n))), draws, n, level)


def from_draws(value: float, draws: Sequence[float] | np.ndarray, n: int, level: float = 0.95) -> Metric:
    """A `Metric` of ``value`` whose interval is the central ``level`` of bootstrap ``draws``."""
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(np.asarray(draws, dtype=float), [tail, 100 - tail])
    # A percentile interval of a skewed statistic can miss the full-sample value by a hair;
    # widen it to include the value so that low <= value <= high always holds in reports.
    return Metric(value, float(min(low, value)), float(max(high, value)), n)


def mean_interval(values: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Metric:
    """The mean of ``values`` with a percentile bootstrap interval."""
    array = np.asarray(values, dtype=float)
    return bootstrap(lambda idx: float(array[idx].mean()), len(array), resamples, seed)

