"""A real tiny sweep, interrupted and restored."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _sweep(tmp_path: Path, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "sweep",
            "--config",
            str(tmp_path / "testbed.yaml"),
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
    # The testbed config with short κ and evaluation grids: 12 problems do not need 150 κ.
    config = yaml.safe_load((REPO / "configs" / "testbed.yaml").read_text())
    config["calibration"]["grid_targets"] = [0.1, 0.3, 0.5, 0.7, 0.9]
    config["evaluation"]["escalation_targets"] = [0.3, 0.7]
    (tmp_path / "testbed.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
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
        parent_metrics = {
            key for (key,) in db.execute("select key from metrics where run_uuid=?", parents[0])
        }
        trial_metrics = {
            key
            for (key,) in db.execute(
                "select m.key from metrics m join tags t on m.run_uuid = t.run_uuid "
                "where t.key='mlflow.parentRunId' and t.value=?",
                parents[0],
            )
        }
    assert len(parents) == 1 and children == 2
    assert {"sweep/trials", "sweep/front_points", "best/calibration/auc"} <= parent_metrics
    assert {"calibration/auc", "calibration/cost_at_large/tokens", "phase/calibrated"} <= (
        trial_metrics
    )
