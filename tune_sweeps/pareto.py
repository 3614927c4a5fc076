"""The Pareto front of a sweep: every calibrated trial's operating points merged, the
non-dominated ones (accuracy up, cost down) evaluated on the test split beside the baselines.

`write_front` writes under `<sweep>/`:

    pareto/front.csv, front.md, front.png, front.json
    pareto/                     also a Serve-loadable policy folder: policy.pt/json (the best
                                trial's) + operating_points.json (best point per budget and
                                accuracy target, each naming its own policy folder)
    best/<point name>/          that point's policy + operating_points.json, ready for Serve
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.calibration import OperatingPoint, save_operating_points
from pipeline.config import ExperimentConfig
from tune_sweeps.spec import SweepSpec

__all__ = ["evaluate_front", "pareto_front", "trial_points", "write_front"]


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


def trial_points(trials: list[dict]) -> list[OperatingPoint]:
    """Every operating point the calibrated trials reported (as JSON, in their final Tune
    report), each naming its trial's policy folder."""
    return [
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
    from pipeline.engines.cache import StepCache
    from pipeline.engines.launch import engine_pool
    from pipeline.evaluation import evaluate_with, summarize
    from pipeline.rules import make_rule

    problems = load_split(cfg.dataset, "test")[:limit]

    async def main():
        async with engine_pool(cfg.models, cache=StepCache(cfg.step_cache_dir)) as engines:
            controller = Controller(cfg, engines)
            baseline_rows, _ = await evaluate_with(
                cfg, controller, problems, ["confidence_threshold"]
            )
            measured = []
            for point in front:
                rule = make_rule("policy", policy=point.policy, threshold=point.kappa)
                states = await controller.run(problems, rule, cfg.evaluation.concurrency)
                measured.append(
                    (
                        float(np.mean([controller.is_correct(s) for s in states])),
                        float(np.mean([s.cost for s in states])),
                    )
                )
            return baseline_rows, measured

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

    from pipeline.evaluation import finish_plot, plot_rule_curves

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    plot_rule_curves(ax, baselines, alpha=0.8)
    front = table.sort_values("test_cost")
    ax.plot(front.test_cost, front.test_accuracy, "-s", color="black", ms=6, label="sweep front")
    finish_plot(
        fig,
        ax,
        "cost (fraction of large-only cost)",
        "accuracy",
        f"Pareto front of the sweep, test split\n{label}",
        path,
    )


def _front_markdown(
    cfg: ExperimentConfig,
    spec: SweepSpec,
    table: pd.DataFrame,
    counts: tuple[int, int, int],
    pareto: Path,
    label: str,
) -> str:
    """front.md: the front's points with their calibration and test numbers. `counts`:
    (calibrated trials, operating points, front points)."""
    trials, points, front = counts
    lines = [
        f"# Sweep `{spec.name}` — Pareto front ({label})",
        "",
        f"{trials} calibrated trial(s), {points} operating points, "
        f"{front} on the front. Calibration columns: the calibration split "
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
    return "\n".join(lines) + "\n"


def write_front(
    cfg: ExperimentConfig, spec: SweepSpec, trials: list[dict], folder: Path
) -> dict[str, Any]:
    """Merge the trials' points, keep the front, evaluate it on test, write the outputs.
    `trials`: the calibrated trials' final Tune reports."""
    from pipeline.evaluation import TESTBED_LABEL

    label = TESTBED_LABEL if cfg.dataset.name == "testbed" else cfg.dataset.name
    points = trial_points(trials)
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

    # Serve-ready folders: pareto/ gets the best trial's policy (by the spec's metric) and,
    # per point name, the best point of any trial naming its own policy; best/<name>/ one each.
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

    counts = (len(trials), len(points), len(front))
    (pareto / "front.md").write_text(_front_markdown(cfg, spec, table, counts, pareto, label))
    return {"front": table, "points": len(points), "folder": pareto}
