"""The evaluation harness: routing rules × one split → accuracy–cost curves, metrics, report.

`evaluate(cfg)` runs `small_only` and `large_only` (the ends of every curve and the cost
normaliser), then sweeps every thresholded rule: a first run at a threshold no score reaches
records the small-only trajectory's escalation scores, and thresholds are set at the quantiles
where `evaluation.escalation_targets` of those drafts would escalate, plus 0 (always escalate).
All runs go through the same controller, engines and step cache, so re-running an evaluation
costs little and reproduces every per-problem result.

Writes to `<output_dir>/evaluation/`: `report.md`, `results.parquet` (one row per problem and
operating point, with the step-by-step routing trace), `points.csv`, `accuracy_cost.png`,
`escalation_by_step.png`, `runs.jsonl` (one line per evaluation run: wall time, cache hit rate,
digest of the results), and logs params, metrics and these artifacts to MLflow.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import metrics
from pipeline.cache import StepCache
from pipeline.calibration import load_operating_points
from pipeline.config import ExperimentConfig
from pipeline.controller import Controller, ReasoningState
from pipeline.data import Problem, load_split
from pipeline.rules import NEVER, RoutingRule, ThresholdRule, make_rule

log = logging.getLogger(__name__)

__all__ = [
    "EvaluationResult",
    "cost_floor",
    "evaluate",
    "evaluate_with",
    "plot_rule_curves",
    "summarize",
]

TESTBED_LABEL = "TESTBED (synthetic arithmetic; not a GSM8K/MATH result)"
SKIPPED_RULES = {
    "prm_threshold": "no process reward model is configured (none fits the testbed), and PRM "
    "scoring through the engine layer is not built yet",
}


@dataclass
class EvaluationResult:
    results: pd.DataFrame  # one row per (operating point, problem)
    points: pd.DataFrame  # one row per operating point
    summary: pd.DataFrame  # one row per rule: AUC, APGR, CPT, cost at large accuracy
    skipped: dict[str, str]
    wall_seconds: float
    cache_stats: dict[str, float]
    output_dir: Path | None = None


# ---------------------------------------------------------------------------- running rules


def _rows(
    rule: RoutingRule, threshold: float, states: list[ReasoningState], controller
) -> list[dict]:
    rows = []
    for state in states:
        trace = [
            {
                "model": step.model,
                "text": step.text,
                "cost": step.cost,
                "score": step.score,
                "draft": step.draft_text,
            }
            for step in state.steps
        ]
        rows.append(
            {
                "rule": rule.name,
                "threshold": threshold,
                "problem_id": state.problem.id,
                "correct": controller.is_correct(state),
                "cost": state.cost,
                "steps": len(state.steps),
                "escalations": state.escalations,
                "escalated_steps": [i for i, s in enumerate(state.steps) if s.escalated],
                "stop_reason": state.stop_reason,
                "final_answer": state.final_answer,
                "trace": json.dumps(trace),
            }
        )
    return rows


def _thresholds(probe: list[ReasoningState], targets: tuple[float, ...]) -> list[float]:
    """Thresholds at which the given fraction of the probe's drafts would escalate."""
    scores = np.asarray([s.score for state in probe for s in state.steps if s.score is not None])
    if scores.size == 0:
        return [0.0]
    levels = {float(np.quantile(scores, 1.0 - t, method="higher")) for t in targets}
    return sorted(levels | {0.0}, reverse=True)


async def evaluate_with(
    cfg: ExperimentConfig,
    controller: Controller,
    problems: list[Problem],
    rules: list[str],
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Run every rule (thresholded ones at every operating point) over `problems`."""
    ev = cfg.evaluation
    rows: list[dict] = []
    skipped: dict[str, str] = {}

    async def run(rule: RoutingRule, threshold: float) -> list[ReasoningState]:
        label = rule.describe() if isinstance(rule, ThresholdRule) else rule.name
        states = await controller.run(
            problems,
            rule,
            concurrency=ev.concurrency,
            progress=(lambda done, total: progress(label, done, total)) if progress else None,
        )
        rows.extend(_rows(rule, threshold, states, controller))
        return states

    policy_dir = _policy_dir(cfg)
    for name in dict.fromkeys(["small_only", "large_only", *rules]):
        if name in SKIPPED_RULES and name in rules:
            skipped[name] = SKIPPED_RULES[name]
            continue
        params = {"policy": str(policy_dir)} if name == "policy" and policy_dir else {}
        rule = make_rule(name, **params)
        if not isinstance(rule, ThresholdRule):
            await run(rule, math.nan)
            continue
        probe = await run(rule.with_threshold(NEVER), NEVER)
        thresholds = set(_thresholds(probe, ev.escalation_targets))
        if name == "policy" and policy_dir:  # the calibrated operating points, too
            thresholds |= {p.kappa for p in load_operating_points(policy_dir)}
        for threshold in sorted(thresholds, reverse=True):
            await run(rule.with_threshold(threshold), threshold)
    return pd.DataFrame(rows), skipped


def _policy_dir(cfg: ExperimentConfig) -> Path | None:
    """The `policy` rule's network: `evaluation.policy`, else a trained one in the output
    folder (`steproute train` exports it there), else None (the hand-set linear policy)."""
    if cfg.evaluation.policy:
        return Path(cfg.evaluation.policy)
    trained = Path(cfg.output_dir) / "policy"
    return trained if (trained / "policy.json").exists() else None


# ---------------------------------------------------------------------------- metrics


def summarize(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Operating points (accuracy, cost, escalation rate) and per-rule curve metrics."""
    large_cost = results.loc[results.rule == "large_only", "cost"].mean()
    grouped = results.groupby(["rule", "threshold"], dropna=False, sort=False)
    points = grouped.agg(
        accuracy=("correct", "mean"),
        cost=("cost", "mean"),
        steps=("steps", "sum"),
        escalations=("escalations", "sum"),
        problems=("problem_id", "count"),
    ).reset_index()
    points["cost_normalized"] = points["cost"] / large_cost
    points["escalation_rate"] = points["escalations"] / points["steps"].clip(lower=1)
    acc_small = float(points.loc[points.rule == "small_only", "accuracy"].iloc[0])
    acc_large = float(points.loc[points.rule == "large_only", "accuracy"].iloc[0])
    summary = []
    for rule, group in points.groupby("rule", sort=False):
        curve = list(zip(group.cost_normalized, group.accuracy, strict=True))
        row = {"rule": rule, "points": len(group), "auc": metrics.auc(curve)}
        if acc_large != acc_small:
            row["apgr"] = metrics.apgr(curve, acc_small, acc_large)
            for pct in (50, 80, 95):
                row[f"cpt{pct}"] = metrics.cpt(curve, acc_small, acc_large, pct / 100)
        row["cost_at_large_accuracy"] = metrics.cost_at_accuracy(curve, acc_large - 0.01)
        row["best_accuracy"] = max(a for _, a in curve)
        summary.append(row)
    return points, pd.DataFrame(summary)


def cost_floor(results: pd.DataFrame, target_accuracy: float) -> float | None:
    """A floor under any step router's normalized cost at `target_accuracy` (None: unreachable).

    A routed run pays for every draft, so at least the small-only cost; a problem the small model
    gets wrong comes out right only if the large model writes at least one step, and the cheapest
    large step is its first one (the question's prefill included). Taking the problems with the
    cheapest first step among those only the large model solves, until the target is reached, gives
    the least any router could pay: a real router pays more (later steps cost more, and one large
    step need not repair the problem)."""
    small = results[results.rule == "small_only"].set_index("problem_id")
    large = results[results.rule == "large_only"].set_index("problem_id").loc[small.index]
    missing = math.ceil(round((target_accuracy - small.correct.mean()) * len(small), 9))
    first_steps = large.trace[large.correct & ~small.correct].map(
        lambda t: json.loads(t)[0]["cost"]
    )
    if missing > len(first_steps):
        return None
    cheapest = first_steps.sort_values().iloc[: max(0, missing)].sum()
    return float((small.cost.sum() + cheapest) / large.cost.sum())


def _digest(results: pd.DataFrame) -> str:
    columns = ["rule", "threshold", "problem_id", "correct", "cost", "escalated_steps", "trace"]
    text = results[columns].to_json(orient="records")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- outputs


def plot_rule_curves(ax, points: pd.DataFrame, **style) -> None:
    """One accuracy-vs-cost curve per rule (a lone point for a rule with one operating point)."""
    for rule, group in points.groupby("rule", sort=False):
        group = group.sort_values("cost_normalized")
        marker = "o" if len(group) == 1 else "o-"
        ax.plot(group.cost_normalized, group.accuracy, marker, label=rule, markersize=4, **style)


def _plots(points: pd.DataFrame, results: pd.DataFrame, folder: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    plot_rule_curves(ax, points)
    _finish(
        fig,
        ax,
        "cost / large-only cost",
        "accuracy",
        f"Accuracy vs cost — {label}",
        folder / "accuracy_cost.png",
    )

    fig, ax = plt.subplots(figsize=(7, 4))
    routed = results[~results.rule.isin(["small_only", "large_only"])]
    for rule, group in routed.groupby("rule", sort=False):
        steps = group.steps.to_numpy()
        width = int(steps.max()) if len(steps) else 0
        escalated, total = np.zeros(width), np.zeros(width)
        for n, marked in zip(group.steps, group.escalated_steps, strict=True):
            total[:n] += 1
            escalated[list(marked)] += 1
        rate = np.divide(escalated, total, out=np.zeros(width), where=total > 0)
        ax.plot(np.arange(width), rate, "o-", label=rule, markersize=3)
    _finish(
        fig,
        ax,
        "step index",
        "escalation rate (all operating points)",
        f"Escalation by step — {label}",
        folder / "escalation_by_step.png",
    )


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _report(cfg: ExperimentConfig, result: EvaluationResult, runs: list[dict], label: str) -> str:
    fmt = lambda x: "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"  # noqa: E731
    lines = [
        f"# Routing evaluation: {cfg.name} — {label}",
        "",
        f"Split `{cfg.evaluation.split}`, {result.results.problem_id.nunique()} problems; "
        f"cost model `{cfg.routing.cost_model}`; models "
        + " → ".join(f"`{m.name}`" for m in cfg.models)
        + ". Costs are normalized to the large-only cost of the same problems.",
        "",
        "## Operating points",
        "",
        "| rule | threshold | accuracy | cost (norm.) | escalation rate | mean cost (abs.) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in result.points.itertuples():
        lines.append(
            f"| {p.rule} | {fmt(p.threshold)} | {p.accuracy:.3f} | {p.cost_normalized:.3f} | "
            f"{p.escalation_rate:.3f} | {p.cost:.4g} |"
        )
    lines += [
        "",
        "## Curve metrics",
        "",
        "AUC: area under accuracy vs normalized cost on [0, 1]. APGR and CPT(x %) as RouteLLM "
        "defines them, on the normalized-cost axis. Cost@large: lowest normalized cost reaching "
        "the large model's accuracy minus one point.",
        "",
        "| rule | AUC | APGR | CPT50 | CPT80 | CPT95 | cost@large | best accuracy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in result.summary.to_dict("records"):
        lines.append(
            f"| {s['rule']} | {fmt(s['auc'])} | {fmt(s.get('apgr'))} | {fmt(s.get('cpt50'))} | "
            f"{fmt(s.get('cpt80'))} | {fmt(s.get('cpt95'))} | {fmt(s['cost_at_large_accuracy'])} "
            f"| {fmt(s['best_accuracy'])} |"
        )
    acc_large = float(result.points.loc[result.points.rule == "large_only", "accuracy"].iloc[0])
    floor = cost_floor(result.results, acc_large - 0.01)
    lines += [
        "",
        f"Cost floor at the large model's accuracy minus one point: {fmt(floor)}. No step router "
        "can reach that accuracy for less: it is the small-only cost plus, for just enough of the "
        "problems only the large model solves, the large model's first step alone (its prompt "
        "prefill included) — the cheapest conceivable repair.",
    ]
    policy_dir = _policy_dir(cfg)
    calibrated = load_operating_points(policy_dir) if policy_dir else []
    if calibrated:
        policy_points = result.points[result.points.rule == "policy"]
        lines += [
            "",
            "## Calibrated operating points on this split",
            "",
            "Chosen by `steproute calibrate` on the calibration split; measured here on held-out "
            "problems. A budget point holds when its cost here stays within its budget.",
            "",
            "| point | method | κ | calibration cost | calibration accuracy | cost here | "
            "accuracy here | target met here |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for p in calibrated:
            here = policy_points[np.isclose(policy_points.threshold, p.kappa)]
            if here.empty:
                continue
            cost, acc = float(here.cost_normalized.iloc[0]), float(here.accuracy.iloc[0])
            kind, value = p.name.split("-", 1)
            if kind == "budget":
                met = cost <= float(value)
            else:  # "accuracy-<fraction>xlarge": a fraction of large-only accuracy
                met = acc >= float(value.removesuffix("xlarge")) * acc_large
            lines.append(
                f"| {p.name} | {p.method} | {p.kappa:.4g} | {p.expected_cost:.3f} | "
                f"{p.expected_accuracy:.3f} | {cost:.3f} | {acc:.3f} | {'yes' if met else 'NO'} |"
            )
    lines += [
        "",
        "`policy`: "
        + (
            f"the trained RouterPolicy in `{policy_dir}`"
            if policy_dir
            else "the hand-set linear RouterPolicy (no trained policy found)"
        )
        + ". `large_only` makes no drafts; every other rule pays for each draft. "
        "`large_likelihood` asks the large model for prompt logprobs of each draft, which vLLM "
        "computes without its prefix cache: each verification pays for the whole context.",
    ]
    if result.skipped:
        lines += ["", "## Not run", ""]
        lines += [f"- `{name}`: {why}." for name, why in result.skipped.items()]
    lines += [
        "",
        "## Runs of this evaluation",
        "",
        "| started (UTC) | wall time | step-cache hit rate | results digest | identical to previous |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    for i, run in enumerate(runs):
        same = "—" if i == 0 else ("yes" if run["digest"] == runs[i - 1]["digest"] else "NO")
        lines.append(
            f"| {run['started']} | {run['wall_seconds']:.1f} s | {run['cache_hit_rate']:.1%} | "
            f"`{run['digest']}` | {same} |"
        )
    lines += [
        "",
        "![accuracy vs cost](accuracy_cost.png)",
        "",
        "![escalation by step](escalation_by_step.png)",
        "",
    ]
    return "\n".join(lines)


def _write(cfg: ExperimentConfig, result: EvaluationResult, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    label = TESTBED_LABEL if cfg.dataset.name == "testbed" else cfg.dataset.name
    result.results.to_parquet(folder / "results.parquet", index=False)
    result.points.to_csv(folder / "points.csv", index=False)
    result.summary.to_csv(folder / "summary.csv", index=False)
    run = {
        "started": time.strftime(
            "%Y-%m-%d %H:%M:%S", time.gmtime(time.time() - result.wall_seconds)
        ),
        "wall_seconds": result.wall_seconds,
        "cache_hit_rate": result.cache_stats.get("cache/hit_rate", 0.0),
        "problems": int(result.results.problem_id.nunique()),
        "digest": _digest(result.results),
    }
    with open(folder / "runs.jsonl", "a") as handle:
        handle.write(json.dumps(run) + "\n")
    runs = [json.loads(line) for line in (folder / "runs.jsonl").read_text().splitlines() if line]
    _plots(result.points, result.results, folder, label)
    (folder / "report.md").write_text(_report(cfg, result, runs, label))


def _log_mlflow(cfg: ExperimentConfig, result: EvaluationResult, folder: Path) -> None:
    import mlflow

    from pipeline.tracking import mlflow_run

    with mlflow_run(cfg, f"evaluate-{cfg.name}", tags={"kind": "evaluation"}):
        values = {
            "eval/wall_seconds": result.wall_seconds,
            **{k.replace("cache/", "eval/cache_"): v for k, v in result.cache_stats.items()},
        }
        for s in result.summary.to_dict("records"):
            for key in (
                "auc",
                "apgr",
                "cpt50",
                "cpt80",
                "cpt95",
                "cost_at_large_accuracy",
                "best_accuracy",
            ):
                value = s.get(key)
                if value is not None and not math.isnan(value):
                    values[f"eval/{s['rule']}/{key}"] = float(value)
        mlflow.log_metrics(values)
        mlflow.log_artifacts(str(folder), artifact_path="evaluation")


# ---------------------------------------------------------------------------- entry point


def evaluate(
    cfg: ExperimentConfig,
    *,
    rules: list[str] | None = None,
    output_dir: Path | None = None,
    engines: dict | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    track: bool = True,
) -> EvaluationResult:
    """Evaluate `rules` (default: the config's) on the config's split; write and log outputs."""
    from pipeline.engines.launch import shutdown_engines, start_engines

    ev = cfg.evaluation
    rules = list(rules or ev.rules)
    problems = load_split(cfg.dataset, ev.split)[: ev.limit]
    if not problems:
        raise ValueError(f"split '{ev.split}' of {cfg.dataset.name} is empty")
    folder = Path(output_dir or Path(cfg.output_dir) / "evaluation")
    cache = StepCache(cfg.step_cache_dir)
    own_engines = engines is None

    async def main() -> tuple[pd.DataFrame, dict[str, str]]:
        nonlocal engines
        if engines is None:
            engines = start_engines(cfg.models, use_ray=ev.use_ray, cache=cache)
        else:
            from pipeline.cache import CachedEngine

            engines = {name: CachedEngine(e, cache) for name, e in engines.items()}
        try:
            controller = Controller(cfg, engines)
            return await evaluate_with(cfg, controller, problems, rules, progress)
        finally:
            cache.flush()
            if own_engines:
                await shutdown_engines(engines)

    started = time.perf_counter()
    results, skipped = asyncio.run(main())
    wall = time.perf_counter() - started
    points, summary = summarize(results)
    result = EvaluationResult(results, points, summary, skipped, wall, cache.stats(), folder)
    _write(cfg, result, folder)
    if track:
        _log_mlflow(cfg, result, folder)
    log.info(
        "evaluation of %d problems took %.1f s; report: %s",
        len(problems),
        wall,
        folder / "report.md",
    )
    return result
