"""Sweeps: spec validation, Pareto filtering, and a real tiny sweep interrupted and restored."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from pipeline.calibration import OperatingPoint
from tune_sweeps.spec import SweepSpecError, load_sweep, parse_sweep
from tune_sweeps.sweep import pareto_front, trial_config

REPO = Path(__file__).resolve().parents[2]


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


def test_shipped_spec_loads_and_missing_file_is_named(tmp_path) -> None:
    spec = load_sweep(REPO / "configs" / "sweeps" / "testbed_small.yaml")
    assert spec.search.num_samples >= 6 and spec.scheduler.asha is not None
    with pytest.raises(SweepSpecError, match="not found"):
        load_sweep(tmp_path / "nope.yaml")


def test_trial_config_sets_the_axes_and_shares_the_cache(testbed_cfg, tmp_path) -> None:
    spec = parse_sweep(GOOD | {"calibration_limit": 7})
    cfg = trial_config(
        testbed_cfg, {"cost_weight": 0.3, "budget": 0.4, "seed": 2.0}, spec, tmp_path
    )
    assert cfg.training.cost_weight == 0.3 and cfg.training.seed == 2
    assert cfg.routing.budget == 0.4 and cfg.training.dual_ascent  # a budget axis means dual ascent
    assert cfg.calibration.limit == 7
    assert cfg.output_dir == str(tmp_path)
    assert cfg.step_cache_dir == testbed_cfg.step_cache_dir.resolve()


def _sweep(tmp_path: Path, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "sweep",
            "--config",
            "configs/testbed.yaml",
            "--sweep",
            str(tmp_path / "tiny.yaml"),
            *extra,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_interrupted_sweep_restores_without_redoing_finished_trials(
    ray_session, testbed_engines, tmp_path
) -> None:
    """A real two-trial sweep (sharing this session's Ray and engine actors): SIGINT once the
    first trial is done, then --resume: the finished trial is not run again, the second
    finishes, the front and MLflow runs are written."""
    spec = {
        "name": "tiny",
        "iterations": 1,
        # A warm start on 8 training problems (the config's is the whole split).
        "axes": {"cost_weight": {"grid": [0.2, 0.4]}, "warm_start_problems": {"grid": [8]}},
        "search": {"algorithm": "grid"},
        "resources": {"cpus_per_trial": 1, "max_concurrent_trials": 1},
        "calibration_limit": 12,
        "front_limit": 12,
        "calibration_method": "quantile",
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    env = os.environ | {
        "STEPROUTE_OUTPUT": str(out),
        "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
    }
    trials = out / "sweeps" / "tiny" / "trials"
    first = _sweep(tmp_path, env)
    seen = []
    for line in first.stdout:  # Tune's console: wait until it has the first trial as finished
        seen.append(line)
        if "completed after" in line:
            break
    else:
        raise AssertionError("the sweep ended before a trial completed:\n" + "".join(seen[-50:]))
    first.send_signal(signal.SIGINT)
    log = "".join(seen) + first.communicate(timeout=300)[0]
    assert first.returncode != 0, log  # interrupted, not finished
    assert not (out / "sweeps" / "tiny" / "pareto" / "front.csv").exists()
    finished = [p.parent.parent for p in trials.glob("*/policy/operating_points.json")]

    second = _sweep(tmp_path, env, "--resume")
    log = second.communicate(timeout=900)[0]
    assert second.returncode == 0, log[-4000:]
    attempts = {d.name: (d / "attempts.log").read_text().count("\n") for d in trials.iterdir()}
    assert len(attempts) == 2, attempts
    for done in finished:
        assert attempts[done.name] == 1, attempts  # not redone
    pareto = out / "sweeps" / "tiny" / "pareto"
    for name in ("front.csv", "front.md", "front.png", "front.json", "operating_points.json"):
        assert (pareto / name).exists(), name
    assert (pareto / "policy.json").exists()
    with sqlite3.connect(out / "mlruns.db") as db:
        parents = db.execute(
            "select run_uuid from tags where key='kind' and value='sweep'"
        ).fetchall()
        children = db.execute(
            "select count(*) from tags where key='mlflow.parentRunId' and value=?", parents[0]
        ).fetchone()[0]
    assert len(parents) == 1 and children == 2
