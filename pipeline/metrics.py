"""Accuracy–cost curve metrics, as RouteLLM defines them (pure functions).

A curve is a rule's operating points (normalized cost, accuracy), cost as a fraction of the
large-only cost of the same problems. The range that matters runs from the small-only cost to the
large-only cost (1.0): `x = (cost − small_cost) / (1 − small_cost)` maps it to [0, 1], as
RouteLLM's x axis runs from "every call to the weak model" to "every call to the strong one".

- PGR (performance gap recovered) of a point: (acc − acc_small) / (acc_large − acc_small).
- `apgr`: the area under PGR over x in [0, 1]. A straight line from small-only to large-only
  scores 0.5; the ideal router (large accuracy at small cost) scores 1.
- `auc`: the area under accuracy over the same x in [0, 1].
- `cpt(f)`: the lowest normalized cost at which PGR first reaches f (NaN if never).
- `cost_at_accuracy`: the lowest normalized cost at which accuracy first reaches a value (the
  reports ask for the large model's accuracy minus one point; NaN if never).
- `shortfall`: the most accuracy a reference curve has over this one at any x in [0, 1]
  (0 when this curve is at or above it everywhere): where a router loses to a baseline.

Between points the curve is linear. Outside a rule's own points, over [0, 1]:
- left of its cheapest point, it scores PGR 0 (accuracy = small-only): nothing it can run costs
  less, and small-only is where every router starts;
- right of its most expensive point it is held flat: with more budget, the rule can still run
  its most expensive point;
- points beyond x = 1 (e.g. escalating every draft, drafts paid on top of large-only cost)
  shape the curve up to x = 1 by interpolation and are not integrated beyond it.
A rule with a single operating point has no curve: `apgr` and `auc` return NaN ("—").
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["apgr", "auc", "auroc", "cost_at_accuracy", "cpt", "pgr", "shortfall"]

Point = tuple[float, float]  # (normalized cost, accuracy)


def _sorted(points: Sequence[Point]) -> tuple[np.ndarray, np.ndarray]:
    if not points:
        raise ValueError("a curve needs at least one operating point")
    ordered = sorted((float(c), float(a)) for c, a in points)
    costs, values = zip(*ordered, strict=True)
    return np.asarray(costs), np.asarray(values)


def _x(costs: np.ndarray, small_cost: float) -> np.ndarray:
    if not 0 <= small_cost < 1:
        raise ValueError(f"small-only cost must be in [0, 1) of large-only cost (got {small_cost})")
    return (costs - small_cost) / (1.0 - small_cost)


def _area(xs: np.ndarray, ys: np.ndarray, left: float) -> float:
    """Integral over x in [0, 1] of the piecewise-linear curve through (xs, ys) (sorted by x):
    `left` before its first point, flat after its last."""
    # Constant `left` up to the first point (then a jump to it), flat after the last one.
    knots_x = [0.0, float(xs[0]), *xs.tolist(), max(1.0, float(xs[-1]))]
    knots_y = [left, left, *ys.tolist(), float(ys[-1])]
    area = 0.0
    knots = list(zip(knots_x, knots_y, strict=True))
    for (x0, y0), (x1, y1) in itertools.pairwise(knots):
        a, b = max(x0, 0.0), min(x1, 1.0)
        if b <= a or x1 == x0:
            continue
        # Interpolate by the fraction of the segment: a slope would overflow on a segment only
        # a few subnormal floats wide.
        ya = y0 + (y1 - y0) * ((a - x0) / (x1 - x0))
        yb = y0 + (y1 - y0) * ((b - x0) / (x1 - x0))
        area += (ya + yb) / 2 * (b - a)
    return float(area)


def pgr(accuracy: float, small_accuracy: float, large_accuracy: float) -> float:
    gap = large_accuracy - small_accuracy
    if gap == 0:
        raise ValueError("PGR is undefined when the small and large accuracies are equal")
    return (accuracy - small_accuracy) / gap


def apgr(
    points: Sequence[Point], small_accuracy: float, large_accuracy: float, small_cost: float
) -> float:
    costs, accs = _sorted(points)
    if len(costs) < 2:
        return math.nan
    gains = np.asarray([pgr(a, small_accuracy, large_accuracy) for a in accs])
    return _area(_x(costs, small_cost), gains, left=0.0)


def auc(points: Sequence[Point], small_accuracy: float, small_cost: float) -> float:
    costs, accs = _sorted(points)
    if len(costs) < 2:
        return math.nan
    return _area(_x(costs, small_cost), accs, left=small_accuracy)


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


def _curve_at(xs: np.ndarray, ys: np.ndarray, left: float, at: np.ndarray) -> np.ndarray:
    """The curve of `_area` evaluated at `at`: `left` before its first point, linear between
    points, flat after its last."""
    values = np.interp(at, xs, ys)
    return np.where(at < xs[0], left, values)


def shortfall(
    points: Sequence[Point], reference: Sequence[Point], small_accuracy: float, small_cost: float
) -> float:
    """max over x in [0, 1] of reference accuracy − this curve's accuracy, floored at 0: how
    far below `reference` the curve dips anywhere from small-only to large-only cost."""
    own_costs, own_accs = _sorted(points)
    ref_costs, ref_accs = _sorted(reference)
    own_x, ref_x = _x(own_costs, small_cost), _x(ref_costs, small_cost)
    knots = np.concatenate([own_x, ref_x])
    at = np.unique(
        np.concatenate([np.linspace(0.0, 1.0, 1001), knots[(knots >= 0) & (knots <= 1)]])
    )
    gap = _curve_at(ref_x, ref_accs, small_accuracy, at) - _curve_at(
        own_x, own_accs, small_accuracy, at
    )
    return float(max(0.0, gap.max()))


def auroc(scores: list[float], labels: list[bool]) -> float:
    """Area under the ROC curve of `scores` for the positive `labels` (ties count half)."""
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not positives or not negatives:
        return float("nan")
    ranked = sorted([(s, 1) for s in positives] + [(s, 0) for s in negatives])
    # Mann-Whitney U with average ranks for ties.
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        average_rank = (i + j + 1) / 2  # ranks are 1-based
        rank_sum += average_rank * sum(label for _, label in ranked[i:j])
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
