"""Threshold calibration: pick a thresholded rule's κ (the policy's, or a baseline's such as
prm_threshold) to meet a cost budget or an accuracy target.

Input: for each candidate κ, the per-problem normalized cost and correctness measured on the
calibration split (`pipeline.calibration_run` runs the controller with the rule at κ; the
step cache makes the grid cheap). This module only computes on those rows. Escalating more (lower κ) costs more, so the cheapest operating point that meets an
accuracy target is the largest κ that meets it, and the most accurate one within a budget is
the smallest κ whose cost stays under it.

- `quantile` method: the empirical means must meet the target on the calibration split.
- `ltt` method (Learn-then-Test, Angelopoulos et al. 2021): each κ is a hypothesis test
  "risk(κ) > target" at level δ — for mean cost a betting test (Waudby-Smith & Ramdas; per-problem
  cost bounded in [0, cost_max]; the reported cost interval uses the tighter of Hoeffding and
  empirical Bernstein at δ/2 each), an exact binomial (Clopper–Pearson) bound for the error rate — tested in a
  fixed sequence from the safest κ toward riskier ones, stopping at the first κ not rejected.
  With probability ≥ 1 − δ, every selected κ meets its target in expectation on new problems,
  *assuming* calibration and deployment problems are exchangeable (i.i.d. from one
  distribution) and per-problem costs do not exceed `cost_max`.

A budget is a fraction of large-only cost, i.e. a ratio of two means: E[cost] ≤ b · E[large-only
cost]. When a grid point carries large-only's cost on the same problems (`GridPoint.large_cost`,
as `choose_points` builds them), LTT tests exactly that, as "E[cost − b · large_cost] > 0". A
problem's cost under the router and under large-only rise together with its length, so the
difference spreads less than the cost alone and the same δ certifies a κ nearer the budget; the
guarantee is then about the population ratio, not about the calibration split's own large-only
mean taken as exact.

A cost needs no label, so budgets can be tested on more problems than accuracy targets: a
budget pool (`calibration.budget_pool`, problems from the same distribution whose answers are
not read) joins the calibration split in every budget test. The betting test's margin shrinks
about as 1/√n, so a certified κ lands nearer its budget; accuracy is still measured on the
labelled split alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from scipy import stats

__all__ = [
    "GridPoint",
    "ROWS_FILE",
    "OperatingPoint",
    "bernstein_upper_bound",
    "betting_certifies",
    "binomial_upper_bound",
    "calibrate_accuracy",
    "calibrate_budget",
    "choose_points",
    "chord_gain",
    "cost_upper_bound",
    "hoeffding_upper_bound",
    "load_operating_points",
    "mark_knee",
    "save_operating_points",
]


@dataclass(frozen=True)
class GridPoint:
    """Per-problem outcomes of a rule at one threshold on the calibration split."""

    kappa: float
    cost: np.ndarray  # normalized cost per problem
    # 0/1 per labelled problem (the calibration split's); a budget pool's problems
    # (`calibration.budget_pool`) are in `cost` only.
    correct: np.ndarray
    # Large-only's normalized cost on the same problems, in the same order (its mean is 1 on the
    # calibration split); None: budgets are tested on `cost` alone, against a fixed large-only mean.
    large_cost: np.ndarray | None = None


TARGETS = ("budget", "accuracy_x_large", "accuracy")

# The κ grid's per-problem rows, saved beside the operating points chosen from them
# (`pipeline.calibration_run.save_calibration_rows`).
ROWS_FILE = "calibration_rows.parquet"


@dataclass(frozen=True)
class OperatingPoint:
    """A calibrated κ of a thresholded rule (`rule`: the policy, or a baseline such as
    prm_threshold) and what it was chosen for. `target` says what the point guarantees:

        budget            mean normalized cost ≤ target_value               name budget-0.3
        accuracy_x_large  accuracy ≥ target_value × large-only accuracy    name accuracy-0.99xlarge
        accuracy          accuracy ≥ target_value                          name accuracy-0.9

    Callers read `target`, `target_value`, `budget` and `model_id`, never the name. A point
    built from its name alone (an operating_points.json written before the target fields) gets
    them from the name, here and only here."""

    name: str  # for people and files: e.g. "budget-0.3" or "accuracy-0.99xlarge"
    kappa: float
    method: str
    expected_cost: float
    cost_interval: tuple[float, float]
    expected_accuracy: float
    accuracy_interval: tuple[float, float]
    problems: int
    policy: str | None = None  # the policy folder, when not the one the file sits beside
    knee: bool = False  # the chosen point furthest above the small-to-large chord (Serve default)
    target: str | None = None  # one of TARGETS; None: read from the name
    target_value: float | None = None
    rule: str = "policy"  # the thresholded rule κ belongs to (`routing.rule`), e.g. prm_threshold
    # Mean large-only cost per problem on the calibration problems (with a budget pool's), in the
    # cost model's units: what `expected_cost` and a served answer's normalized cost are
    # fractions of.
    large_only_cost: float | None = None
    # How many of `problems` had labels (accuracy is measured on those); the rest came from a
    # budget pool and count for cost only. None: all of them.
    labelled: int | None = None

    def __post_init__(self) -> None:
        if self.target is None:
            target, value = _target_from_name(self.name)
            object.__setattr__(self, "target", target)
            object.__setattr__(self, "target_value", value)
        if self.target not in TARGETS or self.target_value is None:
            raise ValueError(f"operating point '{self.name}': unknown target {self.target!r}")

    @property
    def budget(self) -> float | None:
        """The cost budget of a budget point; None for an accuracy point."""
        return self.target_value if self.target == "budget" else None

    @property
    def model_id(self) -> str:
        """Its Serve model id: `router-b0.30`, `router-a0.99` (× large-only accuracy), or
        `router-<name>` for an absolute accuracy target."""
        letter = {"budget": "b", "accuracy_x_large": "a"}.get(self.target)
        return f"router-{letter}{self.target_value:.2f}" if letter else f"router-{self.name}"

    def met(self, cost: float, accuracy: float, large_accuracy: float) -> bool:
        """Does an outcome (normalized cost, accuracy) meet this point's target?"""
        if self.target == "budget":
            return cost <= self.target_value
        if self.target == "accuracy_x_large":
            return accuracy >= self.target_value * large_accuracy
        return accuracy >= self.target_value


def _target_from_name(name: str) -> tuple[str | None, float | None]:
    kind, _, value = name.partition("-")
    try:
        if kind == "budget":
            return "budget", float(value)
        if kind == "accuracy" and value.endswith("xlarge"):
            return "accuracy_x_large", float(value.removesuffix("xlarge"))
        if kind == "accuracy":
            return "accuracy", float(value)
    except ValueError:
        pass
    return None, None


def hoeffding_upper_bound(values: np.ndarray, delta: float, upper: float) -> float:
    """1 − δ upper confidence bound on the mean of i.i.d. values in [0, upper]."""
    n = len(values)
    return float(np.mean(values) + upper * math.sqrt(math.log(1 / delta) / (2 * n)))


def bernstein_upper_bound(values: np.ndarray, delta: float, upper: float) -> float:
    """1 − δ upper confidence bound on the mean of i.i.d. values in [0, upper] from their
    sample variance (empirical Bernstein, Maurer & Pontil 2009, Thm 4). Tighter than Hoeffding
    when the values spread much less than their range, as per-problem costs do."""
    n = len(values)
    if n < 2:
        return float(upper)
    variance = float(np.var(values, ddof=1))
    log_term = math.log(2 / delta)
    return float(
        np.mean(values)
        + math.sqrt(2 * variance * log_term / n)
        + 7 * upper * log_term / (3 * (n - 1))
    )


def betting_certifies(
    values: np.ndarray, budget: float, delta: float, upper: float, lower: float = 0.0
) -> bool:
    """Does a betting test reject "mean ≥ budget" at level δ (Waudby-Smith & Ramdas 2023,
    the test LTT recommends)? Values are i.i.d. in [lower, upper], taken in their given order.

    Wealth starts at 1 and bets, each problem, that its cost falls below the budget:
    K_t = ∏ (1 + λ_t (m − x_t)) with x and m the value and the budget rescaled from
    [lower, upper] to [0, 1], and λ_t chosen
    from the problems before t only (predictable plug-in: larger when past costs spread little).
    If the mean were ≥ m, K would be a nonnegative supermartingale, so it reaches 1/δ with
    probability ≤ δ (Ville's inequality): reaching it certifies the budget. Adapts to the spread
    of the costs without the empirical Bernstein bound's range term."""
    span = upper - lower
    if span <= 0:
        raise ValueError(f"empty value range [{lower}, {upper}]")
    m = (budget - lower) / span
    if m >= 1:
        return True  # no value can exceed the budget
    if m <= 0:
        return False  # no value lies below the budget: nothing to bet on
    x = np.clip((np.asarray(values, dtype=float) - lower) / span, 0.0, 1.0)
    n = len(x)
    # Running mean and variance of the costs before each problem (priors 1/2 and 1/4).
    sums = np.concatenate([[0.0], np.cumsum(x)[:-1]])
    counts = np.arange(n, dtype=float)
    means = (0.5 + sums) / (counts + 1)
    squares = np.concatenate([[0.0], np.cumsum((x - means) ** 2)[:-1]])
    variances = (0.25 + squares) / (counts + 1)
    bets = np.minimum(np.sqrt(2 * math.log(1 / delta) / (n * variances)), 0.75 / (1 - m))
    log_wealth = np.cumsum(np.log1p(bets * (m - x)))
    return bool(log_wealth.max() >= math.log(1 / delta))


def cost_upper_bound(values: np.ndarray, delta: float, upper: float) -> float:
    """1 − δ upper bound on mean cost: the smaller of Hoeffding's and empirical Bernstein's,
    each at δ/2 (a union bound keeps the pair valid at δ)."""
    return min(
        hoeffding_upper_bound(values, delta / 2, upper),
        bernstein_upper_bound(values, delta / 2, upper),
    )


def binomial_upper_bound(failures: int, n: int, delta: float) -> float:
    """Exact (Clopper–Pearson) 1 − δ upper bound on a failure rate."""
    if failures >= n:
        return 1.0
    return float(stats.beta.ppf(1 - delta, failures + 1, n - failures))


def _interval(values: np.ndarray, delta: float, upper: float) -> tuple[float, float]:
    """Two-sided 1 − δ interval on mean cost: `cost_upper_bound` at δ/2 on each side."""
    high = cost_upper_bound(values, delta / 2, upper)
    low = upper - cost_upper_bound(upper - values, delta / 2, upper)
    return (max(0.0, low), high)


def _accuracy_interval(correct: np.ndarray, delta: float) -> tuple[float, float]:
    k, n = int(correct.sum()), len(correct)
    low = float(stats.beta.ppf(delta / 2, k, n - k + 1)) if k > 0 else 0.0
    high = float(stats.beta.ppf(1 - delta / 2, k + 1, n - k)) if k < n else 1.0
    return (low, high)


def _point(
    name: str,
    target: str,
    value: float,
    g: GridPoint,
    method: str,
    delta: float,
    cost_max: float,
) -> OperatingPoint:
    return OperatingPoint(
        name=name,
        target=target,
        target_value=value,
        kappa=g.kappa,
        method=method,
        expected_cost=float(np.mean(g.cost)),
        cost_interval=_interval(g.cost, delta, cost_max),
        expected_accuracy=float(np.mean(g.correct)),
        accuracy_interval=_accuracy_interval(g.correct, delta),
        problems=len(g.cost),
        labelled=len(g.correct) if len(g.correct) < len(g.cost) else None,
    )


def _fixed_sequence(ordered: Sequence[GridPoint], passes) -> GridPoint | None:
    """Walk from the safest κ toward riskier ones; the last κ before the first failure.
    Stopping at the first failure is what makes LTT valid without a multiple-testing
    correction."""
    chosen = None
    for g in ordered:
        if not passes(g):
            break
        chosen = g
    return chosen


def _cost_bound(grid: Sequence[GridPoint], cost_max: float | None) -> float:
    return cost_max if cost_max is not None else max(float(np.max(g.cost)) for g in grid)


def calibrate_budget(
    grid: Sequence[GridPoint],
    budget: float,
    method: str = "quantile",
    delta: float = 0.1,
    cost_max: float | None = None,
) -> OperatingPoint | None:
    """The smallest κ (most escalation, most accuracy) whose cost stays ≤ `budget`.

    Fixed sequence: κ from high (cheap) to low; the first κ that fails stops the search, so
    the LTT guarantee holds without a multiple-testing correction. None if even the cheapest
    κ fails.
    """
    bound = _cost_bound(grid, cost_max)

    def passes(g: GridPoint) -> bool:
        if method == "ltt" and g.large_cost is not None:
            # The ratio itself: E[cost − budget · large_cost] ≤ 0, the difference in
            # [−budget · max large_cost, bound].
            lower = -budget * float(np.max(g.large_cost))
            return betting_certifies(g.cost - budget * g.large_cost, 0.0, delta, bound, lower)
        if method == "ltt":
            return betting_certifies(g.cost, budget, delta, bound)
        return float(np.mean(g.cost)) <= budget

    chosen = _fixed_sequence(sorted(grid, key=lambda g: -g.kappa), passes)
    if chosen is None:
        return None
    return _point(f"budget-{budget:g}", "budget", budget, chosen, method, delta, bound)


def calibrate_accuracy(
    grid: Sequence[GridPoint],
    target_accuracy: float,
    method: str = "quantile",
    delta: float = 0.1,
    cost_max: float | None = None,
    of_large: float | None = None,
) -> OperatingPoint | None:
    """The largest κ (cheapest) whose accuracy stays ≥ `target_accuracy`. With `of_large`, the
    target is that fraction of large-only accuracy (`target_accuracy` = of_large × it), and the
    point says so (target `accuracy_x_large`).

    Fixed sequence: κ from low (escalate most, most accurate) to high.
    """
    bound = _cost_bound(grid, cost_max)

    def passes(g: GridPoint) -> bool:
        if method == "ltt":
            failures = int(len(g.correct) - g.correct.sum())
            return binomial_upper_bound(failures, len(g.correct), delta) <= 1 - target_accuracy
        return float(np.mean(g.correct)) >= target_accuracy

    chosen = _fixed_sequence(sorted(grid, key=lambda g: g.kappa), passes)
    if chosen is None:
        return None
    if of_large is not None:
        name, target, value = f"accuracy-{of_large:g}xlarge", "accuracy_x_large", of_large
    else:
        name, target, value = f"accuracy-{target_accuracy:.3g}", "accuracy", target_accuracy
    return _point(name, target, value, chosen, method, delta, bound)


def save_operating_points(points: Sequence[OperatingPoint], folder: str | Path) -> Path:
    path = Path(folder) / "operating_points.json"
    path.write_text(json.dumps([asdict(p) for p in points], indent=2))
    return path


def load_operating_points(folder: str | Path) -> list[OperatingPoint]:
    path = Path(folder) / "operating_points.json"
    if not path.exists():
        return []
    return [
        OperatingPoint(
            **{
                **p,
                "cost_interval": tuple(p["cost_interval"]),
                "accuracy_interval": tuple(p["accuracy_interval"]),
            }
        )
        for p in json.loads(path.read_text())
    ]


# ---------------------------------------------------------------------------- from grid rows


def choose_points(cfg, rows, rule: str = "policy") -> list[OperatingPoint]:
    """One operating point of `rule` per budget and per accuracy target, from `rule_grid` rows
    (the rule at every κ of its grid, beside small-only and large-only). Rows whose `labelled`
    is False (a budget pool's) count for cost only: budgets are tested on every problem,
    accuracy on the labelled ones."""
    cal = cfg.calibration
    if "labelled" not in rows.columns:
        rows = rows.assign(labelled=True)
    large = rows[rows.rule == "large_only"]
    large_cost, large_accuracy = _cost_and_accuracy(large)
    large_by_problem = large.set_index("problem_id").cost / large_cost
    unmatched = set(rows[rows.rule == rule].problem_id) - set(large_by_problem.index)
    if unmatched:
        raise ValueError(
            f"the calibration rows of rule '{rule}' hold {len(unmatched)} problem(s) that "
            f"large_only did not run (e.g. {sorted(unmatched)[0]!r}): budgets are fractions of "
            "large-only cost on the same problems"
        )
    grid = [
        GridPoint(
            float(kappa),
            group.cost.to_numpy() / large_cost,
            group.correct[group.labelled].to_numpy(float),
            large_by_problem.loc[group.problem_id].to_numpy(),
        )
        for kappa, group in rows[rows.rule == rule].groupby("threshold")
    ]
    if not grid:
        raise ValueError(f"the calibration rows hold no run of rule '{rule}'")
    points = [calibrate_budget(grid, b, cal.method, cal.delta) for b in cal.budgets]
    points += [
        calibrate_accuracy(grid, t * large_accuracy, cal.method, cal.delta, of_large=t)
        for t in cal.accuracy_targets
    ]
    small_cost, small_accuracy = _cost_and_accuracy(rows[rows.rule == "small_only"])
    small_point = (small_cost / large_cost, small_accuracy)
    chosen = [replace(p, rule=rule, large_only_cost=large_cost) for p in points if p is not None]
    return mark_knee(chosen, small_point, (1.0, large_accuracy))


def _cost_and_accuracy(rows) -> tuple[float, float]:
    """Mean cost over every problem, accuracy over the labelled ones."""
    return float(rows.cost.mean()), float(rows.correct[rows.labelled].mean())


def chord_gain(
    point: OperatingPoint, small: tuple[float, float], large: tuple[float, float]
) -> float:
    """How far a point lies above the straight line from small-only to large-only, both axes
    normalized over that range: its share of the accuracy gap recovered minus its share of the
    cost gap spent (0 on the line, the most accuracy per cost where largest)."""
    (cost_s, acc_s), (cost_l, acc_l) = small, large
    recovered = (point.expected_accuracy - acc_s) / (acc_l - acc_s) if acc_l > acc_s else 0.0
    spent = (point.expected_cost - cost_s) / (cost_l - cost_s) if cost_l > cost_s else 0.0
    return recovered - spent


def mark_knee(
    points: list[OperatingPoint], small: tuple[float, float], large: tuple[float, float]
) -> list[OperatingPoint]:
    """The points, the one with the largest `chord_gain` marked `knee` (the first on ties).
    None is marked when no point lies above the chord: no point beats mixing the endpoints."""
    if not points:
        return points
    gains = [chord_gain(p, small, large) for p in points]
    best = max(range(len(points)), key=lambda i: gains[i])
    if gains[best] <= 1e-9:  # on the chord, up to rounding
        return points
    return [replace(p, knee=i == best) for i, p in enumerate(points)]
