"""Curve metrics on hand-computed curves, and their invariants (hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import metrics

unit = st.floats(0.0, 1.0, allow_nan=False)


def test_auc_of_a_straight_line_is_its_mean_height() -> None:
    assert metrics.auc([(0.0, 0.4), (1.0, 0.8)]) == pytest.approx(0.6)


def test_auc_holds_the_curve_flat_outside_its_points() -> None:
    # Flat 0.5 on [0, 0.2], line to 1.0 at 0.6, flat 1.0 to 1: 0.1 + 0.3 + 0.4.
    assert metrics.auc([(0.2, 0.5), (0.6, 1.0)]) == pytest.approx(0.8)


def test_points_beyond_unit_cost_shape_the_curve_but_not_the_range() -> None:
    # Line from (0.5, 0.5) to (1.5, 1.0): at cost 1 the accuracy is 0.75.
    assert metrics.auc([(0.5, 0.5), (1.5, 1.0)]) == pytest.approx(0.25 + 0.5 * (0.5 + 0.75) / 2)


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
        metrics.auc([])


@given(st.lists(st.tuples(unit, unit), min_size=1, max_size=12), unit)
def test_apgr_is_auc_rescaled_by_the_gap(points, small) -> None:
    large = min(1.0, small + 0.25) if small < 0.9 else small - 0.25
    expected = (metrics.auc(points) - small) / (large - small)
    assert metrics.apgr(points, small, large) == pytest.approx(expected, abs=1e-9)


@given(st.lists(st.tuples(unit, unit), min_size=1, max_size=12))
def test_auc_lies_between_the_lowest_and_highest_accuracy(points) -> None:
    accuracies = [a for _, a in points]
    assert min(accuracies) - 1e-12 <= metrics.auc(points) <= max(accuracies) + 1e-12


@given(st.lists(st.tuples(unit, unit), min_size=1, max_size=12), unit)
def test_cost_at_accuracy_reaches_the_target(points, target) -> None:
    cost = metrics.cost_at_accuracy(points, target)
    if math.isnan(cost):
        assert max(a for _, a in points) < target
    else:
        costs = sorted(c for c, _ in points)
        assert costs[0] <= cost <= costs[-1]
