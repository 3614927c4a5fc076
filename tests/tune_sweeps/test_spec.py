"""Sweep specs: what a valid spec is, and the named fix for an invalid one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tune_sweeps.spec import (
    FINAL_METRICS,
    TRAINING_METRICS,
    SweepSpecError,
    load_sweep,
    parse_sweep,
)

REPO = Path(__file__).resolve().parents[2]


GOOD = {
    "name": "t",
    "iterations": 4,
    "axes": {"cost_weight": {"loguniform": [0.1, 0.5]}},
    "search": {"algorithm": "random", "num_samples": 3},
    "scheduler": {"asha": {"metric": "rollout/accuracy", "grace_period": 1}},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"axes": {"temperature": {"grid": [0.1]}}}, "unknown axis"),
        ({"search": {"algorithm": "grid"}}, "search 'grid' needs grid axes"),
        ({"axes": {"cost_weight": {"loguniform": [0.0, 0.5]}}}, "loguniform needs low > 0"),
        ({"axes": {"cost_weight": {"uniform": [0.5, 0.1]}}}, "low < high"),
        ({"axes": {"cost_weight": {"grid": [0.1], "uniform": [0, 1]}}}, "exactly one of"),
        ({"scheduler": {"asha": {"metric": "apgr"}}}, "not reported every iteration"),
        (
            {"scheduler": {"asha": {"metric": "calibration/apgr"}}},
            "not reported every iteration",
        ),
        ({"metric": "calibration/apgr_at_budget"}, "'metric': Input should be 'calibration/apgr'"),
        ({"scheduler": {"asha": {"grace_period": 4}}}, "must be below iterations"),
        (
            {"axes": {"seed": {"uniform": [0, 3]}}, "search": {"algorithm": "random"}},
            "whole numbers",
        ),
        ({"iterations": 0}, "iterations"),
        ({"searh": {}}, "unknown key"),
        (
            {"axes": {"seed": {"grid": [0, 1]}}, "search": {"algorithm": "optuna"}},
            "search 'optuna' samples every axis",
        ),
    ],
)
def test_invalid_specs_fail_with_a_named_fix(change, message) -> None:
    raw = {**GOOD, **change}
    with pytest.raises(SweepSpecError, match=message):
        parse_sweep(raw)


@pytest.mark.parametrize("bare", ["apgr", "auc", "accuracy", "cost_normalized"])
def test_a_bare_final_metric_names_its_namespaced_key(bare) -> None:
    with pytest.raises(
        SweepSpecError, match=f"'metric': metric '{bare}' is now named 'calibration/{bare}'"
    ):
        parse_sweep({**GOOD, "metric": bare})
    mode = "min" if bare.startswith("cost") else "max"
    spec = parse_sweep({**GOOD, "metric": f"calibration/{bare}", "mode": mode})
    assert spec.metric == f"calibration/{bare}"


def test_a_cost_metric_is_ranked_lowest_first() -> None:
    metric = "calibration/cost_at_large/tokens"
    with pytest.raises(SweepSpecError, match=f"'{metric}' is better when lower: write `mode: min`"):
        parse_sweep({**GOOD, "metric": metric, "mode": "max"})
    assert parse_sweep({**GOOD, "metric": metric, "mode": "min"}).mode == "min"
    with pytest.raises(SweepSpecError, match="better when higher: write `mode: max`"):
        parse_sweep({**GOOD, "metric": "calibration/apgr", "mode": "min"})


def test_sweep_metric_keys_are_slash_namespaced() -> None:
    assert parse_sweep(GOOD).metric == "calibration/apgr"
    for key in FINAL_METRICS + TRAINING_METRICS:
        namespace, _, name = key.partition("/")
        assert namespace and name, key
    assert all(key.startswith("calibration/") for key in FINAL_METRICS)


def test_shipped_specs_load_and_missing_file_is_named(tmp_path) -> None:
    spec = load_sweep(REPO / "configs" / "sweeps" / "testbed_small.yaml")
    assert spec.search.num_samples >= 6 and spec.scheduler.asha is not None
    for path in sorted((REPO / "configs" / "sweeps").glob("*.yaml")):
        assert load_sweep(path).metric in FINAL_METRICS, path
    with pytest.raises(SweepSpecError, match="not found"):
        load_sweep(tmp_path / "nope.yaml")
