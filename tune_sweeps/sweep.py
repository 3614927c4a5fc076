"""`steproute sweep`: Ray Tune over training knobs, then the Pareto front of operating points.

The driver: it starts the shared engine actors and the MLflow parent run, runs (or restores)
the Tuner over `tune_sweeps.trial.run_trial`, then hands the calibrated trials to
`tune_sweeps.pareto.write_front`. Written under `<output_dir>/sweeps/<name>/`:

    trials/<trial id>/          each trial's checkpoints and exported policy
    tune/<name>/                Tune's experiment state (`--resume` restores it)
    sweep.json                  the MLflow parent run, so `--resume` logs into it again
    pareto/, best/              the front and its Serve-ready policies (`tune_sweeps.pareto`)

MLflow's parent run gets `sweep/trials`, `sweep/stopped_early`, `sweep/front_points` and
`best/<final metric>` (e.g. `best/calibration/apgr`); each trial logs a child run.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from pipeline.config import ExperimentConfig
from tune_sweeps.pareto import write_front
from tune_sweeps.spec import FINAL_METRICS, LOWER_IS_BETTER, SweepSpec
from tune_sweeps.trial import run_trial

log = logging.getLogger(__name__)

__all__ = ["SweepInterrupted", "run_sweep", "sweep_dir"]


class SweepInterrupted(RuntimeError):
    """Tune stopped (Ctrl-C, SIGINT) with trials unfinished; `--resume` continues."""


def sweep_dir(cfg: ExperimentConfig, spec: SweepSpec) -> Path:
    return (Path(cfg.output_dir) / "sweeps" / spec.name).resolve()


def run_sweep(cfg: ExperimentConfig, spec: SweepSpec, *, resume: bool = False) -> dict[str, Any]:
    """Run (or, with `resume`, restore) the sweep, then write the front."""
    import mlflow
    import ray

    from pipeline.engines.launch import start_engines

    # Trials keep the driver's working directory (model paths stay as written: the step cache
    # keys on them); every output path is made absolute.
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    cfg = cfg.with_absolute_paths(models=False)
    folder = sweep_dir(cfg, spec)
    folder.mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        ray.init()
    # The shared engine actors start here, outside every trial's placement group.
    start_engines(cfg.models, use_ray=True)

    parent_run = _start_parent_run(cfg, spec, folder, resume=resume)
    try:
        experiment = folder / "tune" / spec.name
        results = _tuner(cfg, spec, folder, parent_run, resume=resume).fit()
        finished = results.num_terminated + results.num_errors
        if finished < len(results) or len(results) < spec.num_trials:
            raise SweepInterrupted(
                f"the sweep stopped before every trial finished; continue it with --resume "
                f"(state: {experiment})"
            )
        # A trial's final report carries its operating points; ASHA's early stops do not.
        trials = [
            r.metrics
            for r in results
            if r.error is None and r.metrics and "operating_points" in r.metrics
        ]
        stopped = sum(1 for r in results if r.metrics and "operating_points" not in r.metrics)
        outcome = write_front(cfg, spec, trials, folder)
        mlflow.log_metrics(
            {
                "sweep/trials": float(len(results)),
                "sweep/stopped_early": float(stopped),
                "sweep/front_points": float(len(outcome["front"])),
            }
        )
        for metric in FINAL_METRICS:
            values = [t[metric] for t in trials if not math.isnan(t.get(metric, math.nan))]
            if values:
                best = min(values) if metric in LOWER_IS_BETTER else max(values)
                mlflow.log_metric(f"best/{metric}", best)
        mlflow.log_artifacts(str(outcome["folder"]), artifact_path="pareto")
        return outcome | {
            "trials": len(results),
            "stopped_early": stopped,
            "calibrated": len(trials),
        }
    finally:
        mlflow.end_run()


def _start_parent_run(cfg: ExperimentConfig, spec: SweepSpec, folder: Path, *, resume: bool) -> str:
    """Start the sweep's MLflow parent run and return its id; with `resume`, reopen the one
    `<folder>/sweep.json` names, so a restored sweep's trials join the same parent."""
    import mlflow

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
    return parent.info.run_id


def _tuner(cfg: ExperimentConfig, spec: SweepSpec, folder: Path, parent_run: str, *, resume: bool):
    """The Tuner: restored from `<folder>/tune/<name>` with `resume` (unfinished and errored
    trials rerun), else a new one, refusing to overwrite a sweep of the same name."""
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    storage = folder / "tune"
    experiment = storage / spec.name
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
        return tune.Tuner.restore(
            str(experiment), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    if experiment.exists():
        raise FileExistsError(
            f"a sweep named '{spec.name}' already ran in {experiment}; pass --resume to "
            "continue it, or rename the sweep"
        )
    return tune.Tuner(
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
                    tags={"mlflow.parentRunId": parent_run, "kind": "trial"},
                )
            ],
            failure_config=tune.FailureConfig(max_failures=2),
        ),
    )


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
