"""Schedule shapes: keep ratios as a function of one free parameter ``p`` in (0, 1] (docs/semantics.md §4)."""

from __future__ import annotations

from collections.abc import Callable

#: A shape maps (parameter, number of decisions) to keep ratios. Every shape here is
#: increasing in the parameter and gives ratios in (0, 1] for p in (0, 1], so avg_T is a
#: strictly increasing function of p and bisection finds the unique solution.
Shape = Callable[[float, int], tuple[float, ...]]


def constant_shape(p: float, num_decisions: int) -> tuple[float, ...]:
    """FastV-shaped: the same ratio ``r = p`` at every decision."""
    return (p,) * num_decisions


def geometric_shape(p: float, num_decisions: int) -> tuple[float, ...]:
    """PDrop-shaped: ``r_s = lambda^s`` for s = 1..S with ``lambda = p``."""
    return tuple(p ** (s + 1) for s in range(num_decisions))


def halving_shape(p: float, num_decisions: int) -> tuple[float, ...]:
    """Reroute-vs-PDrop-shaped: ``a, a, a/2, a/4, ...`` with ``a = p``.

    The published four-decision set is (a, a, a/2, a/4); with S decisions the first two
    stay at ``a`` and every later one halves the previous (S = 1 gives just ``a``).
    """
    return tuple(p if s == 0 else p / 2 ** (s - 1) for s in range(num_decisions))


#: the ratio of a decision that keeps one visual token (``k_s = max(1, floor(N r))`` is 1 below 10^9 tokens)
ONE_TOKEN = 1e-9


def geometric_then_one_shape(p: float, num_decisions: int) -> tuple[float, ...]:
    """V2Drop-shaped: each decision keeps the fraction ``p`` of the tokens the previous one kept
    (``r_s = p^s``), and the last keeps one token (V2Drop's final ratio 0, docs/semantics.md §20).
    One decision is just ``p`` (the shape must grow with ``p``)."""
    if num_decisions == 1:
        return (p,)
    return tuple(p ** (s + 1) for s in range(num_decisions - 1)) + (ONE_TOKEN,)


SCHEDULE_SHAPES: dict[str, Shape] = {
    "constant": constant_shape,
    "geometric": geometric_shape,
    "halving": halving_shape,
    "geometric_then_one": geometric_then_one_shape,
}


def shape_function(shape: str | Shape) -> tuple[str, Shape]:
    if callable(shape):
        return getattr(shape, "__name__", "custom"), shape
    if shape not in SCHEDULE_SHAPES:
        raise ValueError(f"unknown schedule shape {shape!r}: use one of {', '.join(SCHEDULE_SHAPES)} (or pass a function)")
    return shape, SCHEDULE_SHAPES[shape]
