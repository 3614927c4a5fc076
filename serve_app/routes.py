"""What each model id of the router means: its routing rule and, for a calibrated rule, its
operating point (the threshold κ and what the calibration expects of it). The calibrated rule is
the config's `routing.rule`, recorded on each point: the learned policy, or a baseline such as
prm_threshold (whose points `steproute calibrate --rule prm_threshold` wrote).

Model ids: `router-b0.30` = the calibrated point for a budget of 30 % of large-only cost,
`router-a0.99` = the point for 99 % of large-only accuracy, `router` = the default point (the
knee of the calibrated curve unless `serve.default_model` names one; `/v1/models` says which), and
each model of the ladder by name (`small`, `large`) as a passthrough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.calibration import OperatingPoint
from pipeline.config import ExperimentConfig

__all__ = ["PASSTHROUGH", "Route", "build_routes"]

PASSTHROUGH = ("small_only", "large_only")  # the rules of the `small` / `large` model ids


@dataclass(frozen=True)
class Route:
    """What a model id means: a routing rule and, for a thresholded one, its threshold κ."""

    model_id: str
    rule: str  # a calibrated rule ("policy", "prm_threshold", …) or one of PASSTHROUGH
    kappa: float | None = None
    point: OperatingPoint | None = None
    stands_for: str | None = None  # `router` only: the model id it answers as
    chosen_by: str | None = None  # `router` only: why that one (knee, config, budget)

    @property
    def budget(self) -> float | None:
        return None if self.point is None else self.point.budget

    @property
    def routed(self) -> bool:
        """Does this id route (a thresholded rule), rather than pass through to one model?"""
        return self.rule not in PASSTHROUGH

    def describe(self) -> dict:
        info: dict = {"rule": self.rule}
        if self.kappa is not None:
            info["kappa"] = self.kappa if math.isfinite(self.kappa) else None
        if self.point is not None:
            info |= {
                "operating_point": self.point.name,
                "expected_cost": self.point.expected_cost,
                "expected_accuracy": self.point.expected_accuracy,
                "method": self.point.method,
                "knee": self.point.knee,
            }
        if self.stands_for is not None:
            info |= {"stands_for": self.stands_for, "chosen_by": self.chosen_by}
        return info


def build_routes(
    cfg: ExperimentConfig, points: list[OperatingPoint]
) -> tuple[dict[str, Route], str]:
    """Every model id this router answers to, and the id that `router` stands for."""
    routes = {
        cfg.models[0].name: Route(cfg.models[0].name, "small_only"),
        cfg.models[-1].name: Route(cfg.models[-1].name, "large_only"),
    }
    for point in points:
        routes[point.model_id] = Route(point.model_id, point.rule, point.kappa, point)
    if not points:  # the hand-set policy: one fixed threshold
        routes["router-k0.50"] = Route("router-k0.50", "policy", 0.5)
    default, chosen_by = cfg.serve.default_model, "serve.default_model"
    if default is None:
        # The knee of the calibrated curve (most accuracy per cost), else the config's budget,
        # else the first policy point.
        knee = [p.model_id for p in points if p.knee]
        budget = cfg.routing.budget
        wanted = f"router-b{budget:.2f}" if budget is not None else None
        routed_ids = [r.model_id for r in routes.values() if r.routed]
        if knee:
            default, chosen_by = knee[0], "knee of the calibrated curve"
        elif wanted in routes:
            default, chosen_by = wanted, "routing.budget"
        else:
            default, chosen_by = routed_ids[0], "first calibrated point"
    if default not in routes:
        raise ValueError(f"serve.default_model '{default}' is not one of {sorted(routes)}")
    target = routes[default]
    routes["router"] = Route(
        "router", target.rule, target.kappa, target.point, stands_for=default, chosen_by=chosen_by
    )
    return routes, default
