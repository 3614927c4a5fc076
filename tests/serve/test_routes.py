"""Which operating point each model id means, and which one `router` stands for (no Serve)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline.calibration import OperatingPoint, mark_knee
from serve_app.routes import build_routes

SMALL, LARGE = (0.2, 0.60), (1.0, 0.98)  # (normalized cost, accuracy) of small- and large-only


def _point(budget: float, cost: float, accuracy: float) -> OperatingPoint:
    return OperatingPoint(
        f"budget-{budget}", 1 - budget, "ltt", cost, (0.0, budget), accuracy, (0.5, 1.0), 400
    )


def test_router_stands_for_the_knee_and_says_so(testbed_cfg) -> None:
    # Gains over the chord: 0.3 → 0.526 − 0.125 = 0.40; 0.5 → 0.868 − 0.375 = 0.49;
    # 0.8 → 0.974 − 0.6875 = 0.29. The knee is the 0.5-budget point, not the config's 0.4.
    points = mark_knee(
        [_point(0.3, 0.30, 0.80), _point(0.5, 0.50, 0.93), _point(0.8, 0.75, 0.97)], SMALL, LARGE
    )
    assert [p.knee for p in points] == [False, True, False]
    routes, default = build_routes(testbed_cfg, points)
    assert default == "router-b0.50"
    info = routes["router"].describe()
    assert info["stands_for"] == "router-b0.50" and info["chosen_by"].startswith("knee")
    assert info["operating_point"] == "budget-0.5" and info["knee"] is True


def test_points_on_the_chord_have_no_knee_and_the_budget_point_is_the_default(testbed_cfg) -> None:
    on_chord = [_point(b, c, 0.60 + 0.38 * (c - 0.2) / 0.8) for b, c in ((0.4, 0.4), (0.6, 0.6))]
    points = mark_knee(on_chord, SMALL, LARGE)
    assert not any(p.knee for p in points)
    routes, default = build_routes(testbed_cfg, points)
    assert testbed_cfg.routing.budget == 0.4 and default == "router-b0.40"
    assert routes["router"].describe()["chosen_by"] == "routing.budget"


def test_the_configured_default_model_wins_over_the_knee(testbed_cfg) -> None:
    points = [replace(_point(0.3, 0.3, 0.8), knee=True), _point(0.8, 0.7, 0.97)]
    cfg = testbed_cfg.model_copy(
        update={"serve": testbed_cfg.serve.model_copy(update={"default_model": "router-b0.80"})}
    )
    routes, default = build_routes(cfg, points)
    assert default == "router-b0.80"
    assert routes["router"].describe()["chosen_by"] == "serve.default_model"
    bad = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"default_model": "x"})})
    with pytest.raises(ValueError, match="not one of"):
        build_routes(bad, points)


def test_a_baseline_rules_points_route_with_that_rule(testbed_cfg) -> None:
    points = [replace(_point(b, b, 0.9), rule="prm_threshold") for b in (0.4, 0.7)]
    routes, default = build_routes(testbed_cfg, points)
    assert default == "router-b0.40"
    assert {routes[m].rule for m in ("router", "router-b0.40", "router-b0.70")} == {"prm_threshold"}
    assert routes["router-b0.70"].routed and not routes["small"].routed
    assert routes["router"].describe()["rule"] == "prm_threshold"
