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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import metrics
from pipeline.calibration import OperatingPoint, load_operating_points
from pipeline.config import ExperimentConfig
from pipeline.controller import Controller, ReasoningState
from pipeline.data import Problem, load_split
from pipeline.engines.cache import StepCache
from pipeline.rules import NEVER, RoutingRule, ThresholdRule, make_rule

log = logging.getLogger(__name__)

__all__ = [
    "EvaluationResult",
    "operating_points",
    "evaluate",
    "calibrated_outcomes",
    "evaluate_with",
    "format_metric",
    "seed_policies",
    "seed_spread",
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
    policies: dict[str, Path] = field(default_factory=dict)  # label → folder, one per seed


# ---------------------------------------------------------------------------- running rules


def format_metric(value: float | None) -> str:
    """Three decimals, or "—" where a metric does not exist (one operating point has no curve)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.3f}"


def _rows(label: str, threshold: float, states: list[ReasoningState], controller) -> list[dict]:
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
                "rule": label,
                "threshold": threshold,
                "problem_id": state.problem.id,
                "correct": controller.is_correct(state),
                "cost": state.cost,
                **{f"cost_{name}": value for name, value in sorted(state.costs.items())},
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
    policies: dict[str, Path] | None = None,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Run every rule (thresholded ones at every operating point) over `problems`.

    `policies` (label → policy folder, e.g. one per training seed) runs the `policy` rule once
    per folder, its rows labelled with the label instead of `policy`."""
    ev = cfg.evaluation
    rows: list[dict] = []
    skipped: dict[str, str] = {}

    async def run(rule: RoutingRule, threshold: float, label: str) -> list[ReasoningState]:
        shown = (
            rule.describe().replace(rule.name, label, 1)
            if isinstance(rule, ThresholdRule)
            else label
        )
        states = await controller.run(
            problems,
            rule,
            concurrency=ev.concurrency,
            progress=(lambda done, total: progress(shown, done, total)) if progress else None,
        )
        rows.extend(_rows(label, threshold, states, controller))
        return states

    async def sweep(rule: RoutingRule, label: str, policy_dir: Path | None = None) -> None:
        if not isinstance(rule, ThresholdRule):
            await run(rule, math.nan, label)
            return
        probe = await run(rule.with_threshold(NEVER), NEVER, label)
        if rule.thresholds:  # a rule with operating points of its own (the oracle)
            thresholds = set(rule.thresholds) | {0.0}
        else:
            thresholds = set(_thresholds(probe, ev.escalation_targets))
        if policy_dir is not None:  # the calibrated operating points, too
            thresholds |= {p.kappa for p in load_operating_points(policy_dir)}
        for threshold in sorted(thresholds, reverse=True):
            await run(rule.with_threshold(threshold), threshold, label)

    policy_dir = _policy_dir(cfg)
    for name in dict.fromkeys(["small_only", "large_only", *rules]):
        if name in SKIPPED_RULES and name in rules:
            skipped[name] = SKIPPED_RULES[name]
            continue
        if name == "policy" and policies:
            for label, folder in policies.items():
                await sweep(make_rule("policy", policy=str(folder)), label, folder)
            continue
        params = {"policy": str(policy_dir)} if name == "policy" and policy_dir else {}
        await sweep(make_rule(name, **params), name, policy_dir if params else None)
    return pd.DataFrame(rows), skipped


def seed_policies(cfg: ExperimentConfig, seeds: list[int]) -> dict[str, Path]:
    """`policy/seed-<s>` → the policy `steproute train --seeds` exported for seed s."""
    policies = {f"policy/seed-{s}": cfg.seed_dir(s) / "policy" for s in seeds}
    missing = [str(p) for p in policies.values() if not (p / "policy.json").exists()]
    if missing:
        raise ValueError(
            f"no trained policy in {missing}; fix: run `steproute train --seeds "
            f"{','.join(map(str, seeds))}` first"
        )
    return policies


def calibrated_outcomes(
    policy_points: pd.DataFrame, calibrated: list[OperatingPoint], acc_large: float
) -> list[tuple[OperatingPoint, float, float, bool]]:
    """Each calibrated point as measured here: (point, normalized cost, accuracy, target met).

    The evaluation runs the policy at every calibrated κ itself, so each point is looked up by
    its exact κ: where the policy's scores crowd near 1, neighbouring κ differ in the seventh
    decimal and a tolerance would read one point's row for another."""
    outcomes = []
    for p in calibrated:
        here = policy_points[policy_points.threshold == p.kappa]
        if here.empty:
            continue
        cost, acc = float(here.cost_normalized.iloc[0]), float(here.accuracy.iloc[0])
        outcomes.append((p, cost, acc, p.met(cost, acc, acc_large)))
    return outcomes


def _policy_dir(cfg: ExperimentConfig) -> Path | None:
    """The `policy` rule's network: `evaluation.policy`, else a trained one in the output
    folder (`steproute train` exports it there), else None (the hand-set linear policy)."""
    if cfg.evaluation.policy:
        return Path(cfg.evaluation.policy)
    trained = Path(cfg.output_dir) / "policy"
    return trained if (trained / "policy.json").exists() else None


# ---------------------------------------------------------------------------- metrics


def operating_points(results: pd.DataFrame, cost_column: str = "cost") -> pd.DataFrame:
    """One row per (rule, threshold): accuracy, mean cost under `cost_column`, normalized by the
    large-only mean cost of the same problems, and the escalation rate."""
    large_cost = results.loc[results.rule == "large_only", cost_column].mean()
    grouped = results.groupby(["rule", "threshold"], dropna=False, sort=False)
    points = grouped.agg(
        accuracy=("correct", "mean"),
        cost=(cost_column, "mean"),
        steps=("steps", "sum"),
        escalations=("escalations", "sum"),
        problems=("problem_id", "count"),
    ).reset_index()
    points["cost_normalized"] = points["cost"] / large_cost
    points["escalation_rate"] = points["escalations"] / points["steps"].clip(lower=1)
    return points


def _curves(points: pd.DataFrame) -> dict[str, list[tuple[float, float]]]:
    return {
        rule: list(zip(group.cost_normalized, group.accuracy, strict=True))
        for rule, group in points.groupby("rule", sort=False)
    }


def _ends(points: pd.DataFrame) -> tuple[float, float, float]:
    """Small-only accuracy, large-only accuracy and small-only normalized cost."""
    small = points[points.rule == "small_only"].iloc[0]
    large = points[points.rule == "large_only"].iloc[0]
    return float(small.accuracy), float(large.accuracy), float(small.cost_normalized)


def summarize(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Operating points under the configured cost model (the `cost` column) and per-rule curve
    metrics (pipeline.metrics). Each `cost_<model>` column the results carry adds that cost
    model's cost@large (`cost_at_large_accuracy/<model>`)."""
    points = operating_points(results)
    acc_small, acc_large, small_cost = _ends(points)
    others = {
        column.removeprefix("cost_"): _curves(operating_points(results, column))
        for column in results.columns
        if column.startswith("cost_")
    }
    summary = []
    rule_curves = _curves(points)
    for rule, curve in rule_curves.items():
        row = {"rule": rule, "points": len(curve)}
        row["auc"] = metrics.auc(curve, acc_small, small_cost)
        if acc_large != acc_small:
            row["apgr"] = metrics.apgr(curve, acc_small, acc_large, small_cost)
            for pct in (50, 80, 95):
                row[f"cpt{pct}"] = metrics.cpt(curve, acc_small, acc_large, pct / 100)
        row["cost_at_large_accuracy"] = metrics.cost_at_accuracy(curve, acc_large - 0.01)
        for name, model_curves in others.items():
            row[f"cost_at_large_accuracy/{name}"] = metrics.cost_at_accuracy(
                model_curves[rule], acc_large - 0.01
            )
        row["best_accuracy"] = max(a for _, a in curve)
        if "confidence_threshold" in rule_curves and rule != "confidence_threshold":
            row["shortfall/confidence_threshold"] = metrics.shortfall(
                curve, rule_curves["confidence_threshold"], acc_small, small_cost
            )
        summary.append(row)
    return points, pd.DataFrame(summary)


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


def _seed_rows(summary: pd.DataFrame, prefix: str = "policy/seed-") -> pd.DataFrame:
    return summary[summary.rule.astype(str).str.startswith(prefix)]


def seed_spread(summary: pd.DataFrame, prefix: str = "policy/seed-") -> dict[str, float]:
    """Mean, sample standard deviation, min and max of the seeds' APGR (rules named
    `<prefix><seed>`); empty when the summary has no seeds."""
    apgr = _seed_rows(summary, prefix).apgr.astype(float)
    if apgr.empty:
        return {}
    return {
        "seeds": float(len(apgr)),
        "apgr_mean": float(apgr.mean()),
        "apgr_std": float(apgr.std(ddof=1)) if len(apgr) > 1 else 0.0,
        "apgr_min": float(apgr.min()),
        "apgr_max": float(apgr.max()),
    }


def _seeds_section(result: EvaluationResult) -> list[str]:
    spread = seed_spread(result.summary)
    if not spread:
        return []
    seeds = _seed_rows(result.summary)
    lines = [
        "",
        "## Seeds",
        "",
        f"The policy was trained with {int(spread['seeds'])} seeds; each is evaluated on its own. "
        f"Headline: **mean APGR {spread['apgr_mean']:.3f} ± {spread['apgr_std']:.3f}** "
        f"(sample standard deviation; range {spread['apgr_min']:.3f}-{spread['apgr_max']:.3f}).",
        "",
        "| seed | APGR | AUC | cost@large |",
        "| --- | ---: | ---: | ---: |",
    ]
    for s in seeds.to_dict("records"):
        lines.append(
            f"| {s['rule'].removeprefix('policy/seed-')} | {format_metric(s['apgr'])} | "
            f"{format_metric(s['auc'])} | {format_metric(s['cost_at_large_accuracy'])} |"
        )
    return lines


def _report(cfg: ExperimentConfig, result: EvaluationResult, runs: list[dict], label: str) -> str:
    fmt = format_metric
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
        "Costs under the configured cost model. APGR: RouteLLM's average performance gap "
        "recovered, the area under PGR over the cost range from small-only to large-only "
        "(normalized to [0, 1]; a straight line between the two scores 0.5). AUC: the area "
        "under accuracy over the same range. A rule with one operating point has no curve (—). "
        "CPT(x %) and cost@large are normalized costs (fraction of large-only cost): the "
        "lowest at which PGR reaches x %, and at which accuracy reaches the large model's "
        "minus one point. `oracle` (testbed only) is the upper reference, not a baseline. "
        "Shortfall: the most accuracy the confidence-threshold rule has over this rule at any "
        "cost in that range (0: at or above it everywhere).",
        "",
        "| rule | AUC | APGR | CPT50 | CPT80 | CPT95 | cost@large | best accuracy | shortfall |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in result.summary.to_dict("records"):
        lines.append(
            f"| {s['rule']} | {fmt(s['auc'])} | {fmt(s.get('apgr'))} | {fmt(s.get('cpt50'))} | "
            f"{fmt(s.get('cpt80'))} | {fmt(s.get('cpt95'))} | {fmt(s['cost_at_large_accuracy'])} "
            f"| {fmt(s['best_accuracy'])} | {fmt(s.get('shortfall/confidence_threshold'))} |"
        )
    acc_large = float(result.points.loc[result.points.rule == "large_only", "accuracy"].iloc[0])
    models = [
        c.split("/", 1)[1]
        for c in result.summary.columns
        if c.startswith("cost_at_large_accuracy/")
    ]
    if models:
        lines += [
            "",
            "## cost@large under every cost model",
            "",
            "Normalized cost at which each rule first reaches the large model's accuracy minus "
            "one point, under each cost model (pipeline/cost.py): `flops` (2 × parameters per "
            "processed token), `price` (input, cached-input and output prices per token), "
            "`tokens` (the large model's generated tokens, as TRIM counts them).",
            "",
            "| rule | " + " | ".join(models) + " |",
            "| --- |" + " ---: |" * len(models),
        ]
        for s in result.summary.to_dict("records"):
            values = " | ".join(fmt(s.get(f"cost_at_large_accuracy/{m}")) for m in models)
            lines.append(f"| {s['rule']} | {values} |")
    lines += _seeds_section(result)
    policy_dir = _policy_dir(cfg)
    policies = result.policies or ({"policy": policy_dir} if policy_dir else {})
    for name, folder in policies.items():
        calibrated = load_operating_points(folder)
        if not calibrated:
            continue
        policy_points = result.points[result.points.rule == name]
        lines += [
            "",
            f"## Calibrated operating points on this split: `{name}`",
            "",
            "Chosen by `steproute calibrate` on the calibration split; measured here on held-out "
            "problems at exactly their κ. A budget point holds when its cost here stays within "
            "its budget; below budget: how much of the budget it left unspent here.",
            "",
            "| point | method | κ | calibration cost | calibration accuracy | cost here | "
            "accuracy here | target met here | below budget |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
        ]
        for p, cost, acc, met in calibrated_outcomes(policy_points, calibrated, acc_large):
            knee = " (knee)" if p.knee else ""
            lines.append(
                f"| {p.name}{knee} | {p.method} | {p.kappa:.4g} | {p.expected_cost:.3f} | "
                f"{p.expected_accuracy:.3f} | {cost:.3f} | {acc:.3f} | {'yes' if met else 'NO'} "
                f"| {fmt(p.budget - cost if p.budget is not None else None)} |"
            )
    which_policy = (
        "one trained RouterPolicy per seed: "
        + ", ".join(f"`{name}` in `{folder}`" for name, folder in result.policies.items())
        if result.policies
        else f"the trained RouterPolicy in `{policy_dir}`"
        if policy_dir
        else "the hand-set linear RouterPolicy (no trained policy found)"
    )
    ran_policy = any(rule.split("/")[0] == "policy" for rule in result.summary.rule)
    lines += [
        "",
        (f"`policy`: {which_policy}. " if ran_policy else "")
        + "`large_only` makes no drafts; every other rule pays for each draft. "
        "`large_likelihood` asks the large model for prompt logprobs of each draft and pays "
        "for it like any call: prefill of the context the large model has not processed in "
        "this trajectory, plus the draft. Costs are computed from each trajectory alone "
        "(pipeline/cost.py), never from the engines' prefix caches, so they do not depend on "
        "what ran before.",
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
        values |= {f"eval/policy_seeds/{k}": v for k, v in seed_spread(result.summary).items()}
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
    seeds: list[int] | None = None,
) -> EvaluationResult:
    """Evaluate `rules` (default: the config's) on the config's split; write and log outputs.
    `seeds`: the `policy` rule runs once per seed's policy (`steproute train --seeds`)."""
    from pipeline.engines.launch import engine_pool

    ev = cfg.evaluation
    rules = list(rules or ev.rules)
    policies = seed_policies(cfg, seeds) if seeds else {}
    problems = load_split(cfg.dataset, ev.split)[: ev.limit]
    if not problems:
        raise ValueError(f"split '{ev.split}' of {cfg.dataset.name} is empty")
    folder = Path(output_dir or Path(cfg.output_dir) / "evaluation")
    cache = StepCache(cfg.step_cache_dir)

    async def main() -> tuple[pd.DataFrame, dict[str, str]]:
        async with engine_pool(
            cfg.models, use_ray=ev.use_ray, cache=cache, engines=engines
        ) as live:
            controller = Controller(cfg, live)
            return await evaluate_with(cfg, controller, problems, rules, progress, policies)

    started = time.perf_counter()
    results, skipped = asyncio.run(main())
    wall = time.perf_counter() - started
    points, summary = summarize(results)
    result = EvaluationResult(
        results, points, summary, skipped, wall, cache.stats(), folder, policies
    )
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
