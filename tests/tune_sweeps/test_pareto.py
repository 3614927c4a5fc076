"""The Pareto front of a sweep's operating points."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.calibration import OperatingPoint
from tune_sweeps.pareto import pareto_front


def _point(cost: float, accuracy: float, name: str = "p") -> OperatingPoint:
    return OperatingPoint(
        name,
        0.5,
        "ltt",
        cost,
        (0, cost),
        accuracy,
        (0, accuracy),
        10,
        target="budget",
        target_value=1.0,
    )


pairs = st.lists(
    st.tuples(st.floats(0, 2, allow_nan=False), st.floats(0, 1, allow_nan=False)),
    min_size=1,
    max_size=40,
)


@given(pairs)
def test_front_is_exactly_the_non_dominated_points(values) -> None:
    points = [_point(c, a, f"p{i}") for i, (c, a) in enumerate(values)]
    front = pareto_front(points)

    def dominates(p, q) -> bool:
        return (
            p.expected_cost <= q.expected_cost
            and p.expected_accuracy >= q.expected_accuracy
            and (p.expected_cost < q.expected_cost or p.expected_accuracy > q.expected_accuracy)
        )

    for f in front:  # nothing beats a front point
        assert not any(dominates(p, f) for p in points)
    for p in points:  # every point is on the front, dominated by it, or a duplicate of it
        assert any(
            f is p
            or dominates(f, p)
            or (f.expected_cost, f.expected_accuracy) == (p.expected_cost, p.expected_accuracy)
            for f in front
        )
    costs = [f.expected_cost for f in front]
    accuracies = [f.expected_accuracy for f in front]
    assert costs == sorted(costs)
    assert all(a < b for a, b in zip(accuracies, accuracies[1:], strict=False))
