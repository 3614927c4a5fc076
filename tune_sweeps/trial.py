"""One sweep trial: train with the trial's knobs, calibrate, report to Tune.

`run_trial` is the Tune function trainable. It runs `rllib_env.train.train` (the same training
`steproute train` runs) in `<sweep>/trials/<trial id>/`, reporting every PPO iteration to Tune
(ASHA acts on those), then calibrates its policy on the calibration split
(`pipeline.calibration_run.policy_grid`, `pipeline.calibration.choose_points`) and reports the
`FINAL_METRICS` (`calibration/apgr`, ...) with its operating points. Trials share the named
engine actors and one step cache.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.calibration import choose_points, save_operating_points
from pipeline.calibration_run import policy_grid
from pipeline.config import ExperimentConfig, merge_dicts, parse_config
from tune_sweeps.spec import AXES, FINAL_METRICS, INTEGER_AXES, TRAINING_METRICS, SweepSpec

__all__ = ["run_trial", "trial_config"]


def trial_config(
    base: ExperimentConfig, params: dict[str, Any], spec: SweepSpec, out: Path
) -> ExperimentConfig:
    """The experiment config of one trial: the base with the trial's axis values, its own
    output folder, and the base's step cache (shared by every trial)."""
    overrides: dict[str, dict[str, Any]] = {}
    for name, value in params.items():
        section, key = AXES[name]
        overrides.setdefault(section, {})[key] = (
            int(value) if name in INTEGER_AXES else float(value)
        )
    if "budget" in params:
        overrides.setdefault("training", {})["dual_ascent"] = True
    if spec.calibration_limit:
        overrides.setdefault("calibration", {})["limit"] = spec.calibration_limit
    if spec.calibration_method:
        overrides.setdefault("calibration", {})["method"] = spec.calibration_method
    overrides["evaluation"] = {"cache_dir": str(base.step_cache_dir.resolve())}
    raw = merge_dicts(base.model_dump(mode="json"), overrides)
    raw["output_dir"] = str(out)
    return parse_config(raw, source=f"trial {out.name}")


def run_trial(params: dict, *, experiment: dict, spec: dict, root: str) -> None:
    """The Tune function trainable."""
    from ray import tune

    from pipeline.evaluation import summarize
    from rllib_env.train import train

    spec_ = SweepSpec.model_validate(spec)
    base = parse_config(experiment)
    out = Path(root) / "trials" / tune.get_context().get_trial_id()
    out.mkdir(parents=True, exist_ok=True)
    with (out / "attempts.log").open("a") as attempts:  # a restored sweep must not redo trials
        attempts.write(f"{time.time():.0f}\n")
    cfg = trial_config(base, params, spec_, out)

    last: dict[str, float] = dict.fromkeys(TRAINING_METRICS, math.nan)

    def on_iteration(iteration: int, metrics: dict) -> None:
        # Every key present in every report (ASHA reads one; Tune checks strictly).
        last.update(dict.fromkeys(TRAINING_METRICS, math.nan) | last | metrics)
        if "rollout/accuracy" in metrics and "rollout/cost_normalized" in metrics:
            weight = metrics.get("train/cost_weight", cfg.training.cost_weight)
            last["rollout/objective"] = (
                metrics["rollout/accuracy"] - weight * metrics["rollout/cost_normalized"]
            )
        tune.report(dict(last) | {"phase/calibrated": 0.0})

    policy = train(
        cfg,
        resume=True,
        iterations=cfg.training.iterations if "ppo_iterations" in params else spec_.iterations,
        output_dir=out,
        on_iteration=on_iteration,
        track=False,
    )
    rows = policy_grid(cfg, policy)
    points = choose_points(cfg, rows)
    save_operating_points(points, policy)
    _, summary = summarize(rows[rows.labelled])  # a budget pool's answers are not read
    row = summary[summary.rule == "policy"].iloc[0]
    budget = cfg.routing.budget
    chosen = next((p for p in points if budget and p.budget == budget), None)
    chosen = chosen or (points[0] if points else None)
    # The FINAL_METRICS, all on the calibration split: APGR and AUC of the policy's curve,
    # accuracy and cost at the chosen operating point (the budget's, else the first), cost@large.
    # (summary column `cost_at_large_accuracy[/<cost model>]` → `calibration/cost_at_large[...]`)
    prefix = "calibration/cost_at_large"
    at_large = {
        metric: float(row[column])
        for metric in FINAL_METRICS
        if metric.startswith(prefix)
        and (column := "cost_at_large_accuracy" + metric.removeprefix(prefix)) in row
    }
    tune.report(
        dict(last)
        | at_large
        | {
            "phase/calibrated": 1.0,
            "calibration/apgr": float(row.get("apgr", math.nan)),
            "calibration/auc": float(row["auc"]),
            "calibration/accuracy": chosen.expected_accuracy if chosen else math.nan,
            "calibration/cost_normalized": chosen.expected_cost if chosen else math.nan,
            "policy_dir": str(policy),
            "operating_points": json.dumps([asdict(p) for p in points]),
        }
    )
