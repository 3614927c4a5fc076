"""Curve metrics as RouteLLM defines them, on hand-computed curves, and their invariants."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pipeline import metrics

unit = st.floats(0.0, 1.0, allow_nan=False)


def test_a_straight_line_from_small_only_to_large_only_scores_one_half() -> None:
    # Small-only at 0.2 of large-only cost with accuracy 0.5, large-only 0.9.
    line = [(0.2, 0.5), (1.0, 0.9)]
    assert metrics.apgr(line, 0.5, 0.9, small_cost=0.2) == pytest.approx(0.5)
    assert metrics.auc(line, 0.5, small_cost=0.2) == pytest.approx(0.7)


def test_a_step_function_scores_its_area() -> None:
    # PGR 0 until x = 0.25 (cost 0.4), then all of the gap: area 0.75.
    step = [(0.2, 0.5), (0.4, 0.5), (0.4, 0.9), (1.0, 0.9)]
    assert metrics.apgr(step, 0.5, 0.9, small_cost=0.2) == pytest.approx(0.75)


def test_the_ideal_router_scores_one_and_small_only_scores_zero() -> None:
    assert metrics.apgr([(0.2, 0.5), (0.2, 0.9)], 0.5, 0.9, 0.2) == pytest.approx(1.0)
    assert metrics.apgr([(0.2, 0.5), (1.0, 0.5)], 0.5, 0.9, 0.2) == pytest.approx(0.0)


def test_a_rule_with_a_single_point_has_no_curve() -> None:
    assert math.isnan(metrics.apgr([(1.0, 0.9)], 0.5, 0.9, 0.2))
    assert math.isnan(metrics.auc([(1.0, 0.9)], 0.5, 0.2))


def test_left_of_its_cheapest_point_a_rule_scores_nothing() -> None:
    # Cheapest point at x = 0.5 with PGR 1: PGR 0 on [0, 0.5), 1 after it.
    late = [(0.6, 0.9), (1.0, 0.9)]
    assert metrics.apgr(late, 0.5, 0.9, small_cost=0.2) == pytest.approx(0.5)


def test_right_of_its_last_point_the_curve_is_held_flat() -> None:
    # x from 0 to 0.5 linear PGR 0 -> 0.5, then flat 0.5: 0.125 + 0.25.
    short = [(0.2, 0.5), (0.6, 0.7)]
    assert metrics.apgr(short, 0.5, 0.9, small_cost=0.2) == pytest.approx(0.375)


def test_points_beyond_large_only_cost_shape_the_curve_up_to_it_only() -> None:
    # Line from x = 0 (PGR 0) to x = 2 (PGR 1): at x = 1 PGR is 0.5, area 0.25.
    beyond = [(0.2, 0.5), (1.8, 0.9)]
    assert metrics.apgr(beyond, 0.5, 0.9, small_cost=0.2) == pytest.approx(0.25)


def test_the_small_cost_must_lie_below_large_only() -> None:
    with pytest.raises(ValueError, match="small-only cost"):
        metrics.apgr([(0.2, 0.5), (1.0, 0.9)], 0.5, 0.9, small_cost=1.0)


def test_cpt_interpolates_the_first_crossing() -> None:
    points = [(0.1, 0.6), (0.3, 0.7), (0.5, 0.8), (1.0, 0.9)]
    # PGR: 0, 1/3, 2/3, 1. PGR 0.5 is halfway between cost 0.3 and 0.5.
    assert metrics.cpt(points, 0.6, 0.9, 0.5) == pytest.approx(0.4)
    assert metrics.cpt(points, 0.6, 0.9, 1.0) == pytest.approx(1.0)
    assert math.isnan(metrics.cpt(points[:2], 0.6, 0.9, 0.5))


def test_cost_at_accuracy_is_the_first_crossing_not_a_later_one() -> None:
    points = [(0.2, 0.5), (0.4, 0.9), (0.6, 0.7), (0.8, 0.95)]
    assert metrics.cost_at_accuracy(points, 0.9) == pytest.approx(0.4)


def test_pgr_refuses_equal_endpoints() -> None:
    with pytest.raises(ValueError, match="undefined"):
        metrics.pgr(0.5, 0.7, 0.7)


def test_empty_curve_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        metrics.apgr([], 0.5, 0.9, 0.2)


curves = st.lists(st.tuples(unit, unit), min_size=2, max_size=12)


@given(curves, st.floats(0.0, 0.6), st.floats(0.0, 0.5))
def test_apgr_is_auc_rescaled_by_the_gap(points, small_cost, small) -> None:
    large = small + 0.4
    expected = (metrics.auc(points, small, small_cost) - small) / (large - small)
    assert metrics.apgr(points, small, large, small_cost) == pytest.approx(expected, abs=1e-9)


@example(points=[(0.0, 0.0), (2.225073858507e-311, 1.0)], small_cost=0.0)  # a subnormal-wide jump
@given(curves, st.floats(0.0, 0.6))
def test_auc_lies_between_the_lowest_and_highest_accuracy(points, small_cost) -> None:
    accuracies = [a for _, a in points]
    low, high = min(accuracies), max(accuracies)
    small = low  # the left extension is the small-only accuracy: keep it inside the range
    assert low - 1e-12 <= metrics.auc(points, small, small_cost) <= high + 1e-12


@given(st.lists(st.tuples(unit, unit), min_size=1, max_size=12), unit)
def test_cost_at_accuracy_reaches_the_target(points, target) -> None:
    cost = metrics.cost_at_accuracy(points, target)
    if math.isnan(cost):
        assert max(a for _, a in points) < target
    else:
        costs = sorted(c for c, _ in points)
        assert costs[0] <= cost <= costs[-1]


def test_shortfall_is_the_deepest_dip_below_the_reference() -> None:
    small, large = (0.2, 0.6), (1.0, 0.9)
    reference = [small, (0.4, 0.8), large]
    # Above the reference except near cost 0.4, where it is 0.1 below (x = 0.25).
    curve = [small, (0.3, 0.8), (0.4, 0.7), (0.5, 0.88), large]
    assert metrics.shortfall(curve, reference, 0.6, 0.2) == pytest.approx(0.1)
    assert metrics.shortfall(reference, reference, 0.6, 0.2) == 0.0
    # A curve everywhere above the reference has none; the reference then falls short.
    ideal = [small, (0.25, 0.9), large]
    assert metrics.shortfall(ideal, reference, 0.6, 0.2) == 0.0
    assert metrics.shortfall(reference, ideal, 0.6, 0.2) > 0.05
