"""`prm_threshold` through the controller with the committed testbed PRM in a real vLLM pooling
engine (a shared `EngineActor`): its ends, and its scoring cost in the trajectory."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.controller import Controller
from pipeline.data import load_split
from pipeline.engines.launch import start_engines
from pipeline.rules import NEVER, make_rule

PROBLEMS = 12


@pytest.fixture(scope="module")
def prm_controller(testbed_cfg, testbed_engines, ray_session):
    prm = start_engines([testbed_cfg.prm], use_ray=True)
    yield Controller(testbed_cfg, {**testbed_engines, **prm})
    for engine in prm.values():
        ray_session.kill(engine.actor, no_restart=True)


@pytest.fixture(scope="module")
def problems(testbed_cfg):
    return load_split(testbed_cfg.dataset, "test")[:PROBLEMS]


def _run(controller, problems, rule):
    return asyncio.run(controller.run(problems, rule, concurrency=PROBLEMS))


def test_prm_threshold_zero_escalates_every_draft_and_one_keeps_every_draft(
    prm_controller, problems
) -> None:
    everything = _run(prm_controller, problems, make_rule("prm_threshold", threshold=0.0))
    assert all(s.escalations == len(s.steps) for s in everything)
    nothing = _run(prm_controller, problems, make_rule("prm_threshold", threshold=1.0))
    small = _run(prm_controller, problems, make_rule("small_only"))
    assert all(s.escalations == 0 for s in nothing)
    assert [s.solution for s in nothing] == [s.solution for s in small]


def test_the_prm_scoring_cost_is_part_of_the_trajectory_cost(prm_controller, problems) -> None:
    scored = _run(prm_controller, problems, make_rule("prm_threshold", threshold=NEVER))
    small = _run(prm_controller, problems, make_rule("small_only"))
    name = prm_controller.cfg.prm.name
    for with_prm, alone in zip(scored, small, strict=True):
        paid = with_prm.cost_by_model[name]
        assert paid > 0
        assert with_prm.cost == pytest.approx(alone.cost + paid)
        # every cost model charges the PRM's forward pass; none is left out
        assert set(with_prm.costs) == set(alone.costs)
        assert all(with_prm.costs[m] >= alone.costs[m] for m in alone.costs)
        assert sum(s.score is not None for s in with_prm.steps) == len(with_prm.steps)


def test_prm_threshold_is_calibrated_and_evaluated_at_its_points(
    prm_controller, problems, testbed_cfg, tmp_path
) -> None:
    from pipeline.calibration import load_operating_points
    from pipeline.calibration_run import calibrate_rule
    from pipeline.evaluation import evaluate_with, points_folder

    # Twelve problems are too few for LTT to certify anything: the empirical (quantile) method.
    cal = testbed_cfg.calibration.model_copy(
        update={
            "limit": PROBLEMS,
            "method": "quantile",
            "budgets": (0.7, 0.95),
            "accuracy_targets": (0.9,),
            "grid_targets": (0.1, 0.3, 0.5, 0.7, 0.9),
        }
    )
    cfg = testbed_cfg.model_copy(update={"output_dir": str(tmp_path), "calibration": cal})
    points = calibrate_rule(cfg, "prm_threshold", engines=prm_controller.engines)
    assert points, "no operating point of prm_threshold met any target"
    assert {p.rule for p in points} == {"prm_threshold"}
    assert load_operating_points(cfg.rule_dir("prm_threshold")) == points
    assert points_folder(cfg, "prm_threshold") == cfg.rule_dir("prm_threshold")
    # The grid's rows are kept beside the points: choosing again from them gives the same points.
    import pandas as pd

    from pipeline.calibration import choose_points

    kept = pd.read_parquet(cfg.rule_dir("prm_threshold") / "calibration_rows.parquet")
    assert choose_points(cfg, kept, "prm_threshold") == points
    # The config's budget pool ran beside the split (as many problems, under `limit`): budgets
    # were tested on both, accuracy on the split's labelled problems alone.
    assert all((p.problems, p.labelled) == (2 * PROBLEMS, PROBLEMS) for p in points)
    per_rule = kept.groupby(["rule", "threshold"], dropna=False).labelled.agg(["sum", "size"])
    assert (per_rule["sum"] == PROBLEMS).all() and (per_rule["size"] == 2 * PROBLEMS).all()

    # Evaluation runs the rule at exactly its calibrated κ, beside its quantile grid.
    rows, skipped = asyncio.run(
        evaluate_with(cfg, Controller(cfg, prm_controller.engines), problems, ["prm_threshold"])
    )
    assert not skipped
    ran = set(rows[rows.rule == "prm_threshold"].threshold)
    assert {p.kappa for p in points} <= ran
