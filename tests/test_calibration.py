"""Threshold calibration on synthetic scores: the guarantees and the orderings it promises."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.calibration import (
    GridPoint,
    OperatingPoint,
    bernstein_upper_bound,
    betting_certifies,
    binomial_upper_bound,
    calibrate_accuracy,
    calibrate_budget,
    cost_upper_bound,
    hoeffding_upper_bound,
    load_operating_points,
    save_operating_points,
)
from pipeline.evaluation import calibrated_outcomes

KAPPAS = np.linspace(0.05, 0.95, 19)


def true_cost(kappa: float) -> float:  # lower κ escalates more: costs more
    return 1.0 - 0.9 * kappa


def true_accuracy(kappa: float) -> float:
    return 0.95 - 0.4 * kappa


def synthetic_grid(rng: np.random.Generator, n: int) -> list[GridPoint]:
    grid = []
    for kappa in KAPPAS:
        mean = true_cost(kappa)
        cost = rng.beta(4 * mean, 4 * (1 - mean) + 1e-9, size=n) * 1.0  # in [0, 1], mean ≈ mean
        correct = (rng.random(n) < true_accuracy(kappa)).astype(float)
        grid.append(GridPoint(float(kappa), cost, correct))
    return grid


def test_ltt_budget_point_holds_on_held_out_data_with_probability_1_minus_delta() -> None:
    delta, budget, failures, quantile_failures = 0.1, 0.5, 0, 0
    for seed in range(200):
        grid = synthetic_grid(np.random.default_rng(seed), 300)
        ltt = calibrate_budget(grid, budget, "ltt", delta, cost_max=1.0)
        plain = calibrate_budget(grid, budget, "quantile")
        failures += ltt is not None and true_cost(ltt.kappa) > budget
        quantile_failures += plain is not None and true_cost(plain.kappa) > budget
    assert failures / 200 <= delta
    assert quantile_failures > failures  # the empirical choice alone gives no such guarantee


def test_ltt_accuracy_point_holds_with_probability_1_minus_delta() -> None:
    delta, target, failures = 0.1, 0.8, 0
    for seed in range(200):
        grid = synthetic_grid(np.random.default_rng(1000 + seed), 300)
        point = calibrate_accuracy(grid, target, "ltt", delta)
        failures += point is not None and true_accuracy(point.kappa) < target
    assert failures / 200 <= delta


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), budgets=st.lists(st.floats(0.1, 1.0), min_size=2, max_size=4))
def test_a_larger_budget_never_picks_a_cheaper_threshold(seed, budgets) -> None:
    grid = synthetic_grid(np.random.default_rng(seed), 100)
    kappas = []
    for budget in sorted(budgets):
        point = calibrate_budget(grid, budget)
        kappas.append(np.inf if point is None else point.kappa)
        if point is not None:
            assert point.expected_cost <= budget
    assert all(a >= b for a, b in zip(kappas, kappas[1:], strict=False))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), target=st.floats(0.5, 0.95))
def test_accuracy_point_meets_its_target_on_the_calibration_data(seed, target) -> None:
    grid = synthetic_grid(np.random.default_rng(seed), 100)
    point = calibrate_accuracy(grid, target)
    if point is not None:
        assert point.expected_accuracy >= target
        low, high = point.accuracy_interval
        assert low <= point.expected_accuracy <= high


def test_bounds_are_upper_bounds() -> None:
    values = np.full(100, 0.3)
    assert hoeffding_upper_bound(values, 0.1, 1.0) > 0.3
    assert 0.05 < binomial_upper_bound(5, 100, 0.1) < 0.12
    assert binomial_upper_bound(100, 100, 0.1) == 1.0


def test_cost_bounds_cover_the_true_mean_and_bernstein_is_tighter_on_narrow_costs() -> None:
    """Per-problem costs like a router's: most near the draft cost, a few escalated ones up to
    the bound. Each bound must hold in >= 1 − δ of repeated samples; the variance-aware one is
    the tighter here, and the combined bound is never looser than Hoeffding at δ/2."""
    delta, n, upper, trials = 0.1, 1000, 1.3, 300
    rng = np.random.default_rng(0)

    def costs(size: int) -> np.ndarray:
        escalated = rng.random(size) < 0.2
        return np.where(escalated, rng.uniform(0.4, upper, size), rng.uniform(0.15, 0.25, size))

    true_mean = float(np.mean(costs(2_000_000)))
    misses = {"hoeffding": 0, "bernstein": 0, "combined": 0}
    widths = {name: [] for name in misses}
    for _ in range(trials):
        sample = costs(n)
        bounds = {
            "hoeffding": hoeffding_upper_bound(sample, delta, upper),
            "bernstein": bernstein_upper_bound(sample, delta, upper),
            "combined": cost_upper_bound(sample, delta, upper),
        }
        for name, bound in bounds.items():
            misses[name] += bound < true_mean
            widths[name].append(bound - sample.mean())
        assert bounds["combined"] <= hoeffding_upper_bound(sample, delta / 2, upper) + 1e-12
    assert all(m / trials <= delta for m in misses.values()), misses
    assert np.mean(widths["bernstein"]) < 0.8 * np.mean(widths["hoeffding"])
    assert np.mean(widths["combined"]) < np.mean(widths["hoeffding"])


def _router_costs(rng: np.random.Generator, size: int, upper: float = 1.3) -> np.ndarray:
    escalated = rng.random(size) < 0.2
    return np.where(escalated, rng.uniform(0.4, upper, size), rng.uniform(0.15, 0.25, size))


def test_the_betting_test_rarely_certifies_a_budget_the_mean_exceeds() -> None:
    rng = np.random.default_rng(1)
    true_mean = float(np.mean(_router_costs(rng, 2_000_000)))
    # A budget just under the true mean: certifying it is an error, allowed with rate <= δ.
    errors = sum(
        betting_certifies(_router_costs(rng, 1000), true_mean - 0.002, 0.1, 1.3) for _ in range(300)
    )
    assert errors / 300 <= 0.1


def test_the_betting_test_certifies_budgets_nearer_the_mean_than_the_bounds() -> None:
    rng = np.random.default_rng(2)
    true_mean = float(np.mean(_router_costs(rng, 2_000_000)))
    margins = {"betting": [], "bound": []}
    for _ in range(40):
        sample = _router_costs(rng, 1000)
        grid = np.linspace(0.0, 0.2, 401)  # budgets above the true mean
        certified = [b for b in grid if betting_certifies(sample, true_mean + b, 0.1, 1.3)]
        margins["betting"].append(min(certified))
        margins["bound"].append(cost_upper_bound(sample, 0.1, 1.3) - true_mean)
    assert np.mean(margins["betting"]) < 0.8 * np.mean(margins["bound"])
    assert betting_certifies(np.zeros(2), 0.5, 0.1, 1.0) is False  # too few problems to bet on
    assert betting_certifies(np.zeros(50), 1.0, 0.1, 1.0)  # no cost can exceed the range


def _length_scaled_grid(rng: np.random.Generator, n: int, ratio: bool) -> list[GridPoint]:
    """Problems of varied length: large-only costs the length, the router at κ a share of it
    (mean `true_cost(κ)`), so the true budget ratio E[cost] / E[large-only cost] is
    `true_cost(κ)`. Costs normalized by the sample's large-only mean, as `choose_points` does."""
    length = rng.uniform(0.3, 1.7, n)
    grid = []
    for kappa in np.linspace(0.05, 0.95, 181):  # fine: κ 0.0045 of cost apart
        mean = true_cost(kappa)
        share = rng.beta(4 * mean, 4 * (1 - mean) + 1e-9, size=n)
        correct = (rng.random(n) < true_accuracy(kappa)).astype(float)
        large = length / length.mean()
        grid.append(GridPoint(float(kappa), share * large, correct, large if ratio else None))
    return grid


def test_ltt_tests_a_budget_as_the_ratio_it_is_and_lands_nearer_it() -> None:
    """With large-only's per-problem cost beside the router's, LTT tests E[cost − b · large] ≤ 0:
    the guarantee holds at δ, and the chosen κ costs nearer the budget than when the same
    costs are tested alone (their spread includes the problems' lengths)."""
    delta, budget, trials = 0.1, 0.5, 200
    failures, gaps = 0, {True: [], False: []}
    for seed in range(trials):
        for ratio in (True, False):
            grid = _length_scaled_grid(np.random.default_rng(seed), 400, ratio)
            point = calibrate_budget(grid, budget, "ltt", delta)
            gaps[ratio].append(budget - (true_cost(point.kappa) if point else true_cost(1.0)))
            failures += ratio and point is not None and true_cost(point.kappa) > budget
    assert failures / trials <= delta
    assert np.mean(gaps[True]) < 0.85 * np.mean(gaps[False]), {
        k: np.mean(g) for k, g in gaps.items()
    }


def test_operating_points_round_trip(tmp_path) -> None:
    grid = synthetic_grid(np.random.default_rng(0), 50)
    points = [calibrate_budget(grid, 0.6), calibrate_accuracy(grid, 0.7, "ltt")]
    save_operating_points(points, tmp_path)
    assert load_operating_points(tmp_path) == points
    assert load_operating_points(tmp_path / "missing") == []


def test_budget_below_every_threshold_gives_no_point() -> None:
    grid = synthetic_grid(np.random.default_rng(0), 50)
    assert calibrate_budget(grid, 0.01) is None


def test_each_calibrated_point_is_read_at_its_own_kappa_where_scores_crowd() -> None:
    # Saturated policy scores: calibrated κ that differ in the seventh decimal. Each point's
    # held-out row is the one at its exact κ, not a neighbour within a float tolerance.
    kappas = [0.9999998, 0.9999995, 0.9999991]
    points_here = pd.DataFrame(
        {
            "rule": "policy",
            "threshold": kappas,
            "cost_normalized": [0.25, 0.35, 0.45],
            "accuracy": [0.70, 0.80, 0.90],
        }
    )
    calibrated = [
        OperatingPoint(f"budget-{b}", k, "ltt", b - 0.02, (0.0, b), 0.8, (0.7, 0.9), 100)
        for b, k in zip((0.3, 0.4, 0.4), kappas, strict=True)
    ]
    outcomes = calibrated_outcomes(points_here, calibrated, acc_large=0.95)
    assert [(cost, acc) for _, cost, acc, _ in outcomes] == [(0.25, 0.7), (0.35, 0.8), (0.45, 0.9)]
    assert [met for *_, met in outcomes] == [True, True, False]


def test_points_carry_their_target_and_model_id() -> None:
    grid = synthetic_grid(np.random.default_rng(0), 50)
    budget = calibrate_budget(grid, 0.6)
    assert (budget.target, budget.target_value, budget.budget) == ("budget", 0.6, 0.6)
    assert budget.model_id == "router-b0.60"
    of_large = calibrate_accuracy(grid, 0.7 * 0.9, "ltt", of_large=0.7)
    assert (of_large.target, of_large.target_value, of_large.budget) == (
        "accuracy_x_large",
        0.7,
        None,
    )
    assert of_large.model_id == "router-a0.70" and of_large.name == "accuracy-0.7xlarge"
    absolute = calibrate_accuracy(grid, 0.7)
    assert absolute.target == "accuracy" and absolute.model_id == "router-accuracy-0.7"
    # What each target means for an outcome (cost, accuracy) with large-only accuracy 0.9.
    assert budget.met(0.6, 0.0, 0.9) and not budget.met(0.61, 1.0, 0.9)
    assert of_large.met(1.0, 0.63, 0.9) and not of_large.met(0.0, 0.62, 0.9)
    assert absolute.met(1.0, 0.7, 0.0) and not absolute.met(0.0, 0.69, 1.0)


def test_a_point_saved_before_the_target_fields_reads_its_target_from_its_name() -> None:
    legacy = OperatingPoint("accuracy-0.99xlarge", 0.01, "ltt", 0.8, (0.7, 0.9), 0.97, (0.9, 1), 9)
    assert (legacy.target, legacy.target_value) == ("accuracy_x_large", 0.99)
    assert OperatingPoint("budget-0.4", 0.2, "ltt", 0.3, (0, 0.4), 0.9, (0.8, 1), 9).budget == 0.4
    with pytest.raises(ValueError, match="unknown target"):
        OperatingPoint("cheapest", 0.2, "ltt", 0.3, (0, 0.4), 0.9, (0.8, 1), 9)


def _grid_rows(rng: np.random.Generator, rule: str, shift: float, n: int = 200) -> pd.DataFrame:
    """Per-problem rows (evaluation format) of `rule` over KAPPAS; `shift` moves its curve."""
    frames = []
    for kappa in KAPPAS:
        cost = np.clip(rng.normal(true_cost(kappa) + shift, 0.05, n), 0.0, 1.0)
        correct = rng.random(n) < true_accuracy(kappa)
        frames.append(
            pd.DataFrame(
                {
                    "rule": rule,
                    "threshold": kappa,
                    "problem_id": [f"p{i}" for i in range(n)],
                    "cost": cost,
                    "correct": correct,
                }
            )
        )
    return pd.concat(frames)


def test_points_of_a_baseline_rule_come_from_its_rows_and_say_whose_they_are(testbed_cfg) -> None:
    from pipeline.calibration import choose_points

    rng = np.random.default_rng(0)
    ends = pd.DataFrame(
        {
            "rule": ["small_only"] * 50 + ["large_only"] * 50,
            "threshold": np.nan,
            "problem_id": [f"p{i}" for i in range(50)] * 2,
            "cost": [0.1] * 50 + [1.0] * 50,
            "correct": [False] * 25 + [True] * 25 + [True] * 50,
        }
    )
    # The PRM router's costs sit 0.2 above the policy's at every κ (it pays for scoring).
    rows = pd.concat(
        [ends, _grid_rows(rng, "policy", 0.0, 50), _grid_rows(rng, "prm_threshold", 0.2, 50)]
    )
    policy = choose_points(testbed_cfg, rows)
    prm = choose_points(testbed_cfg, rows, "prm_threshold")
    assert {p.rule for p in policy} == {"policy"} and {p.rule for p in prm} == {"prm_threshold"}
    by_name = {p.name: p for p in policy}
    for p in prm:
        if p.budget is not None:  # the costlier rule needs a higher κ (less escalation) per budget
            assert p.kappa > by_name[p.name].kappa
            assert p.expected_cost <= p.budget
    with pytest.raises(ValueError, match="no run of rule 'confidence_threshold'"):
        choose_points(testbed_cfg, rows, "confidence_threshold")
    # Budgets compare with large-only on the same problems: rows beyond them are refused.
    extra = _grid_rows(rng, "policy", 0.0, 60)
    with pytest.raises(ValueError, match="10 problem"):
        choose_points(testbed_cfg, pd.concat([ends, extra]))


def test_a_point_saved_before_the_rule_field_is_the_policys(tmp_path) -> None:
    import json

    saved = {
        "name": "budget-0.4",
        "kappa": 0.3,
        "method": "ltt",
        "expected_cost": 0.35,
        "cost_interval": [0.3, 0.4],
        "expected_accuracy": 0.9,
        "accuracy_interval": [0.85, 0.95],
        "problems": 100,
    }
    (tmp_path / "operating_points.json").write_text(json.dumps([saved]))
    (point,) = load_operating_points(tmp_path)
    assert point.rule == "policy" and point.budget == 0.4


def _pooled_rows(rng: np.random.Generator, labelled: int, pool: int) -> pd.DataFrame:
    """Rows of the policy over a fine κ grid with small-only and large-only (cost 1 each), on
    `labelled` calibration problems then `pool` budget-pool problems. A pool problem's
    `correct` is False throughout: its answer is not read, and the points must not show it."""
    n = labelled + pool
    ids = [f"p{i}" for i in range(n)]
    flags = np.arange(n) < labelled
    frames = [
        pd.DataFrame(
            {"rule": rule, "threshold": np.nan, "problem_id": ids, "cost": cost, "labelled": flags}
        ).assign(correct=(rng.random(n) < accuracy) & flags)
        for rule, cost, accuracy in (("small_only", 0.1, 0.5), ("large_only", 1.0, 0.95))
    ]
    for kappa in np.linspace(0.05, 0.95, 181):
        cost = np.clip(rng.normal(true_cost(kappa), 0.3, n), 0.0, 2.0)
        correct = (rng.random(n) < true_accuracy(kappa)) & flags
        frames.append(
            pd.DataFrame(
                {"rule": "policy", "threshold": kappa, "problem_id": ids, "cost": cost}
            ).assign(correct=correct, labelled=flags)
        )
    return pd.concat(frames).sample(frac=1.0, random_state=0)  # the pool's rows interleaved


def _ltt_cfg(testbed_cfg, budgets: tuple[float, ...], accuracy: tuple[float, ...] = ()):
    cal = testbed_cfg.calibration.model_copy(
        update={"method": "ltt", "budgets": budgets, "accuracy_targets": accuracy}
    )
    return testbed_cfg.model_copy(update={"calibration": cal})


def test_a_budget_pool_counts_for_cost_and_never_for_accuracy(testbed_cfg) -> None:
    from pipeline.calibration import choose_points

    cfg = _ltt_cfg(testbed_cfg, (0.5, 0.7), (0.8,))
    rows = _pooled_rows(np.random.default_rng(0), 300, 900)
    pooled = choose_points(cfg, rows)
    alone = choose_points(cfg, rows[rows.labelled].drop(columns="labelled"))
    names = ["budget-0.5", "budget-0.7", "accuracy-0.8xlarge"]
    assert [p.name for p in pooled] == [p.name for p in alone] == names
    policy = rows[rows.rule == "policy"]
    for p in pooled:
        assert (p.problems, p.labelled) == (1200, 300)
        at_kappa = policy[policy.threshold == p.kappa]
        assert p.expected_accuracy == pytest.approx(at_kappa[at_kappa.labelled].correct.mean())
        assert p.expected_cost == pytest.approx(at_kappa.cost.mean())
    # The accuracy target is tested on the labelled problems alone: the same κ either way.
    assert pooled[2].kappa == alone[2].kappa
    assert all(p.labelled is None and p.problems == 300 for p in alone)


def test_a_budget_pool_certifies_points_nearer_their_budget_and_keeps_the_guarantee(
    testbed_cfg,
) -> None:
    from pipeline.calibration import choose_points

    delta, budget, trials = 0.1, 0.5, 40
    cfg = _ltt_cfg(testbed_cfg, (budget,))
    gaps, failures = {"alone": [], "pooled": []}, 0
    for seed in range(trials):
        rows = _pooled_rows(np.random.default_rng(seed), 200, 600)
        for name, used in (("alone", rows[rows.labelled]), ("pooled", rows)):
            (point,) = choose_points(cfg, used)
            gaps[name].append(budget - true_cost(point.kappa))
            failures += true_cost(point.kappa) > budget
    assert failures / (2 * trials) <= delta
    # 4x the problems: the betting test's margin about halves.
    assert np.mean(gaps["pooled"]) < 0.7 * np.mean(gaps["alone"]), {
        k: np.mean(g) for k, g in gaps.items()
    }
