"""Accuracy–cost curve metrics (pure functions; the evaluation harness and Tune use them).

A curve is a list of operating points (normalized cost, accuracy), cost as a fraction of the
large-only cost of the same problems. Between points the curve is linear; outside them it is
held flat (numpy `interp` semantics), and areas are taken over normalized cost in [0, 1].

- `auc`: area under accuracy vs normalized cost on [0, 1].
- PGR (performance gap recovered, RouteLLM) of a point: (acc − acc_small) / (acc_large −
  acc_small). `apgr`: area under PGR vs normalized cost on [0, 1] — RouteLLM's APGR with the
  share of calls to the strong model replaced by normalized cost, which is what stepwise routing
  spends.
- `cpt(x)`: call-performance threshold — the lowest normalized cost at which the curve's PGR
  first reaches x (RouteLLM's CPT(x %), again on the cost axis). NaN if never.
- `cost_at_accuracy`: lowest normalized cost at which the curve first reaches an accuracy
  (the harness asks for the large model's accuracy minus one point). NaN if never.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["apgr", "auc", "cost_at_accuracy", "cpt", "pgr"]

Point = tuple[float, float]  # (normalized cost, accuracy)


def _sorted(points: Sequence[Point]) -> tuple[np.ndarray, np.ndarray]:
    if not points:
        raise ValueError("a curve needs at least one operating point")
    ordered = sorted((float(c), float(a)) for c, a in points)
    costs, accs = zip(*ordered, strict=True)
    return np.asarray(costs), np.asarray(accs)


def _area(costs: np.ndarray, values: np.ndarray) -> float:
    """Integral over [0, 1] of the piecewise-linear, flat-extended curve."""
    grid = np.unique(np.clip(np.concatenate([[0.0, 1.0], costs]), 0.0, 1.0))
    return float(np.trapezoid(np.interp(grid, costs, values), grid))


def auc(points: Sequence[Point]) -> float:
    costs, accs = _sorted(points)
    return _area(costs, accs)


def pgr(accuracy: float, small_accuracy: float, large_accuracy: float) -> float:
    gap = large_accuracy - small_accuracy
    if gap == 0:
        raise ValueError("PGR is undefined when the small and large accuracies are equal")
    return (accuracy - small_accuracy) / gap


def apgr(points: Sequence[Point], small_accuracy: float, large_accuracy: float) -> float:
    costs, accs = _sorted(points)
    gains = np.asarray([pgr(a, small_accuracy, large_accuracy) for a in accs])
    return _area(costs, gains)


def _first_crossing(costs: np.ndarray, values: np.ndarray, target: float) -> float:
    """Lowest cost where the piecewise-linear curve first reaches `target`."""
    if values[0] >= target:
        return float(costs[0])
    for i in range(1, len(costs)):
        if values[i] >= target:
            c0, c1, v0, v1 = costs[i - 1], costs[i], values[i - 1], values[i]
            return float(c0 + (target - v0) / (v1 - v0) * (c1 - c0))
    return math.nan


def cpt(
    points: Sequence[Point], small_accuracy: float, large_accuracy: float, fraction: float
) -> float:
    costs, accs = _sorted(points)
    gains = np.asarray([pgr(a, small_accuracy, large_accuracy) for a in accs])
    return _first_crossing(costs, gains, fraction)


def cost_at_accuracy(points: Sequence[Point], accuracy: float) -> float:
    costs, accs = _sorted(points)
    return _first_crossing(costs, accs, accuracy)
