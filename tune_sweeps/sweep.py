"""`steproute sweep`: Ray Tune over training knobs, then the Pareto front of operating points.

Each trial is `rllib_env.train.train` (the same training `steproute train` runs) in its own
folder, reporting every PPO iteration to Tune (ASHA acts on those), then calibrates its policy
on the calibration split (`pipeline.calibration_run.policy_grid`, `pipeline.calibration.choose_points`) and reports
APGR, AUC and its operating points. Trials share the named engine actors and one step cache.

After the trials, every trial's operating points are merged; the non-dominated ones (accuracy
up, cost down) form the front, which is evaluated on the test split beside the baselines.
Written under `<output_dir>/sweeps/<name>/`:

    trials/<trial id>/          each trial's checkpoints and exported policy
    tune/<name>/                Tune's experiment state (`--resume` restores it)
    pareto/front.csv, front.md, front.png, front.json
    pareto/                     also a Serve-loadable policy folder: policy.pt/json (the best
                                trial's) + operating_points.json (best point per budget and
                                accuracy target, each naming its own policy folder)
    best/<point name>/          that point's policy + operating_points.json, ready for Serve
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.calibration import OperatingPoint, choose_points, save_operating_points
from pipeline.calibration_run import policy_grid
from pipeline.config import ExperimentConfig, merge_dicts, parse_config
from tune_sweeps.spec import AXES, FINAL_METRICS, INTEGER_AXES, TRAINING_METRICS, SweepSpec

log = logging.getLogger(__name__)

__all__ = ["SweepInterrupted", "pareto_front", "run_sweep", "sweep_dir", "trial_config"]


class SweepInterrupted(RuntimeError):
    """Tune stopped (Ctrl-C, SIGINT) with trials unfinished; `--resume` continues."""


def sweep_dir(cfg: ExperimentConfig, spec: SweepSpec) -> Path:
    return (Path(cfg.output_dir) / "sweeps" / spec.name).resolve()


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
    _, summary = summarize(rows)
    row = summary[summary.rule == "policy"].iloc[0]
    budget = cfg.routing.budget
    chosen = next((p for p in points if budget and p.budget == budget), None)
    chosen = chosen or (points[0] if points else None)
    tune.report(
        dict(last)
        | {
            "phase/calibrated": 1.0,
            "apgr": float(row.get("apgr", math.nan)),
            "auc": float(row["auc"]),
            "accuracy": chosen.expected_accuracy if chosen else math.nan,
            "cost_normalized": chosen.expected_cost if chosen else math.nan,
            "policy_dir": str(policy),
            "operating_points": json.dumps([asdict(p) for p in points]),
        }
    )


# ---------------------------------------------------------------------------- the front


def pareto_front(points: list[OperatingPoint]) -> list[OperatingPoint]:
    """The points no other point beats on both axes (accuracy ≥ and cost ≤, one strictly),
    cheapest first. Among equal (cost, accuracy) duplicates one is kept."""
    ordered = sorted(points, key=lambda p: (p.expected_cost, -p.expected_accuracy))
    front: list[OperatingPoint] = []
    best_accuracy = -math.inf
    for point in ordered:
        if point.expected_accuracy > best_accuracy:
            front.append(point)
            best_accuracy = point.expected_accuracy
    return front


def _best_per_name(points: list[OperatingPoint]) -> list[OperatingPoint]:
    """Per operating-point name (budget-0.3, accuracy-0.99xlarge, ...), the most accurate one
    (ties: the cheaper)."""
    best: dict[str, OperatingPoint] = {}
    for p in points:
        key = (p.expected_accuracy, -p.expected_cost)
        if p.name not in best or key > (
            best[p.name].expected_accuracy,
            -best[p.name].expected_cost,
        ):
            best[p.name] = p
    return sorted(best.values(), key=lambda p: p.expected_cost)


def _copy_policy(source: str, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in ("policy.pt", "policy.json"):
        shutil.copy2(Path(source) / name, target / name)


def evaluate_front(
    cfg: ExperimentConfig, front: list[OperatingPoint], limit: int | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run each front point and the baselines on the test split. Returns (front rows with test
    accuracy and cost, baseline curve points)."""
    import asyncio

    from pipeline.controller import Controller
    from pipeline.data import load_split
    from pipeline.engines.cache import CachedEngine, StepCache
    from pipeline.engines.launch import start_engines
    from pipeline.evaluation import evaluate_with, summarize
    from pipeline.rules import PolicyRule

    problems = load_split(cfg.dataset, "test")[:limit]
    cache = StepCache(cfg.step_cache_dir)

    async def main():
        engines = start_engines(cfg.models, use_ray=True)
        controller = Controller(cfg, {n: CachedEngine(e, cache) for n, e in engines.items()})
        try:
            baseline_rows, _ = await evaluate_with(
                cfg, controller, problems, ["confidence_threshold"]
            )
            measured = []
            for point in front:
                states = await controller.run(
                    problems,
                    PolicyRule(point.policy, kappa=point.kappa),
                    cfg.evaluation.concurrency,
                )
                measured.append(
                    (
                        float(np.mean([controller.is_correct(s) for s in states])),
                        float(np.mean([s.cost for s in states])),
                    )
                )
            return baseline_rows, measured
        finally:
            cache.flush()

    baseline_rows, measured = asyncio.run(main())
    baselines, _ = summarize(baseline_rows)
    large_cost = float(baseline_rows.loc[baseline_rows.rule == "large_only", "cost"].mean())
    table = pd.DataFrame(
        [
            {
                "point": p.name,
                "policy": p.policy,
                "kappa": p.kappa,
                "calibration_cost": p.expected_cost,
                "calibration_accuracy": p.expected_accuracy,
                "test_cost": cost / large_cost,
                "test_accuracy": accuracy,
                "test_problems": len(problems),
            }
            for p, (accuracy, cost) in zip(front, measured, strict=True)
        ]
    )
    return table, baselines


def _plot(table: pd.DataFrame, baselines: pd.DataFrame, path: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.evaluation import _finish as finish
    from pipeline.evaluation import plot_rule_curves

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    plot_rule_curves(ax, baselines, alpha=0.8)
    front = table.sort_values("test_cost")
    ax.plot(front.test_cost, front.test_accuracy, "-s", color="black", ms=6, label="sweep front")
    finish(
        fig,
        ax,
        "cost (fraction of large-only cost)",
        "accuracy",
        f"Pareto front of the sweep, test split\n{label}",
        path,
    )


def write_front(
    cfg: ExperimentConfig, spec: SweepSpec, trials: list[dict], folder: Path
) -> dict[str, Any]:
    """Merge the trials' points, keep the front, evaluate it on test, write the outputs."""
    from pipeline.evaluation import TESTBED_LABEL

    label = TESTBED_LABEL if cfg.dataset.name == "testbed" else cfg.dataset.name
    points = [
        replace(p, policy=t["policy_dir"])
        for t in trials
        for p in (
            OperatingPoint(
                **{
                    **d,
                    "cost_interval": tuple(d["cost_interval"]),
                    "accuracy_interval": tuple(d["accuracy_interval"]),
                }
            )
            for d in json.loads(t["operating_points"])
        )
    ]
    if not points:
        raise RuntimeError(
            f"no trial produced an operating point ({len(trials)} calibrated trial(s)): every "
            "trial stopped early or failed, or calibration certified no point; raise "
            "calibration_limit, or set calibration_method: quantile"
        )
    front = pareto_front(points)
    pareto = folder / "pareto"
    pareto.mkdir(parents=True, exist_ok=True)
    table, baselines = evaluate_front(cfg, front, spec.front_limit)
    table.to_csv(pareto / "front.csv", index=False)
    (pareto / "front.json").write_text(json.dumps([asdict(p) for p in front], indent=2))
    _plot(table, baselines, pareto / "front.png", label)

    best_trial = max(
        trials,
        key=lambda t: (
            t.get(spec.metric, -math.inf) if spec.mode == "max" else -t.get(spec.metric, math.inf)
        ),
    )
    _copy_policy(best_trial["policy_dir"], pareto)
    chosen = _best_per_name(points)
    save_operating_points(chosen, pareto)
    for point in chosen:
        target = folder / "best" / point.name
        _copy_policy(point.policy, target)
        save_operating_points([replace(point, policy=None)], target)

    lines = [
        f"# Sweep `{spec.name}` — Pareto front ({label})",
        "",
        f"{len(trials)} calibrated trial(s), {len(points)} operating points, "
        f"{len(front)} on the front. Calibration columns: the calibration split "
        f"({spec.calibration_method or cfg.calibration.method}, δ = {cfg.calibration.delta}); test columns: "
        f"{int(table.test_problems.iloc[0])} test problems.",
        "",
        "| point | κ | calibration cost | calibration accuracy | test cost | test accuracy | policy |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in table.itertuples():
        lines.append(
            f"| {row.point} | {row.kappa:.4g} | {row.calibration_cost:.3f} | "
            f"{row.calibration_accuracy:.3f} | {row.test_cost:.3f} | {row.test_accuracy:.3f} | "
            f"{Path(row.policy).parent.name} |"
        )
    lines += [
        "",
        "Serve it: `steproute serve --config … --policy "
        f"{pareto}` (best point per budget and accuracy target, each with its own policy).",
    ]
    (pareto / "front.md").write_text("\n".join(lines) + "\n")
    return {"front": table, "points": len(points), "folder": pareto}


# ---------------------------------------------------------------------------- the sweep


def run_sweep(cfg: ExperimentConfig, spec: SweepSpec, *, resume: bool = False) -> dict[str, Any]:
    """Run (or, with `resume`, restore) the sweep, then write the front."""
    import mlflow
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    # Trials keep the driver's working directory (model paths stay as written: the step cache
    # keys on them); every output path is made absolute.
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    cfg = cfg.with_absolute_paths(models=False)
    folder = sweep_dir(cfg, spec)
    folder.mkdir(parents=True, exist_ok=True)
    storage = folder / "tune"
    experiment = storage / spec.name
    if not ray.is_initialized():
        ray.init()
    from pipeline.engines.launch import start_engines

    # The shared engine actors start here, outside every trial's placement group.
    start_engines(cfg.models, use_ray=True)

    state_file = folder / "sweep.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    mlflow.set_tracking_uri(cfg.mlflow_uri)
    mlflow.set_experiment(cfg.tracking.experiment)
    parent = mlflow.start_run(
        run_id=state.get("mlflow_parent") if resume else None,
        run_name=None if resume and state.get("mlflow_parent") else f"sweep-{spec.name}",
        tags={"kind": "sweep", "testbed": str(cfg.dataset.name == "testbed")},
    )
    state_file.write_text(json.dumps({"mlflow_parent": parent.info.run_id}))
    try:
        trainable = tune.with_resources(
            tune.with_parameters(
                run_trial,
                experiment=cfg.model_dump(mode="json"),
                spec=spec.model_dump(mode="json"),
                root=str(folder),
            ),
            {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial},
        )
        if resume and tune.Tuner.can_restore(str(experiment)):
            log.info("restoring the sweep from %s", experiment)
            tuner = tune.Tuner.restore(
                str(experiment), trainable=trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            if experiment.exists():
                raise FileExistsError(
                    f"a sweep named '{spec.name}' already ran in {experiment}; pass --resume to "
                    "continue it, or rename the sweep"
                )
            tuner = tune.Tuner(
                trainable,
                param_space=spec.param_space(),
                tune_config=tune.TuneConfig(
                    num_samples=spec.search.num_samples,
                    search_alg=_searcher(spec),
                    scheduler=_scheduler(spec),
                    max_concurrent_trials=spec.resources.max_concurrent_trials,
                ),
                run_config=tune.RunConfig(
                    name=spec.name,
                    storage_path=str(storage),
                    callbacks=[
                        MLflowLoggerCallback(
                            tracking_uri=cfg.mlflow_uri,
                            experiment_name=cfg.tracking.experiment,
                            tags={"mlflow.parentRunId": parent.info.run_id, "kind": "trial"},
                        )
                    ],
                    failure_config=tune.FailureConfig(max_failures=2),
                ),
            )
        results = tuner.fit()
        finished = results.num_terminated + results.num_errors
        if finished < len(results) or len(results) < spec.num_trials:
            raise SweepInterrupted(
                f"the sweep stopped before every trial finished; continue it with --resume "
                f"(state: {experiment})"
            )
        trials = [
            r.metrics
            for r in results
            if r.error is None and r.metrics and "operating_points" in r.metrics
        ]
        stopped = sum(1 for r in results if r.metrics and "operating_points" not in r.metrics)
        outcome = write_front(cfg, spec, trials, folder)
        mlflow.log_metrics(
            {
                "trials": float(len(results)),
                "stopped_early": float(stopped),
                "front_points": float(len(outcome["front"])),
            }
        )
        for metric in FINAL_METRICS:
            values = [t[metric] for t in trials if not math.isnan(t.get(metric, math.nan))]
            if values:
                mlflow.log_metric(
                    f"best_{metric}", max(values) if spec.mode == "max" else min(values)
                )
        mlflow.log_artifacts(str(outcome["folder"]), artifact_path="pareto")
        return outcome | {
            "trials": len(results),
            "stopped_early": stopped,
            "calibrated": len(trials),
        }
    finally:
        mlflow.end_run()


def _searcher(spec: SweepSpec):
    if spec.search.algorithm != "optuna":
        return None  # grid and random: Tune's basic variant generator
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("search 'optuna' needs optuna: pip install optuna") from exc
    return OptunaSearch(metric=spec.metric, mode=spec.mode)


def _scheduler(spec: SweepSpec):
    asha = spec.scheduler.asha
    if asha is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",
        metric=asha.metric,
        mode=asha.mode,
        # One report per PPO iteration plus the final, calibrated one.
        max_t=spec.iterations + 1,
        grace_period=asha.grace_period,
        reduction_factor=asha.reduction_factor,
    )
