"""The evaluation's outputs: report.md (labelled TESTBED where the data is the testbed), the
plots (`pipeline.evaluation.plots`), results.parquet / points.csv / summary.csv / runs.jsonl,
and the MLflow run."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd

from pipeline.calibration import ROWS_FILE, load_operating_points
from pipeline.config import CALIBRATED_RULES, ExperimentConfig
from pipeline.evaluation.plots import write_plots
from pipeline.evaluation.running import EvaluationResult, points_folder, policy_folder
from pipeline.evaluation.summary import (
    calibrated_outcomes,
    policy_vs_prm,
    results_digest,
    seed_rows,
    seed_spread,
)
from pipeline.features import LOGPROB_FEATURES

__all__ = [
    "TESTBED_LABEL",
    "format_metric",
    "log_mlflow",
    "report_markdown",
    "write_outputs",
]

TESTBED_LABEL = "TESTBED (synthetic arithmetic; not a GSM8K/MATH result)"


def format_metric(value: float | None) -> str:
    """Three decimals, or "—" where a metric does not exist (one operating point has no curve)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.3f}"


def report_markdown(
    cfg: ExperimentConfig, result: EvaluationResult, runs: list[dict], label: str
) -> str:
    """The evaluation's report.md: one section per function below, in reading order."""
    acc_large = float(result.points.loc[result.points.rule == "large_only", "accuracy"].iloc[0])
    lines = _points_section(cfg, result, label)
    lines += _curve_metrics_section(result)
    lines += _cost_models_section(result)
    lines += _policy_vs_prm_section(result)
    lines += _seeds_section(result)
    lines += _calibrated_section(cfg, result, acc_large)
    lines += _notes_section(cfg, result)
    lines += _runs_section(runs)
    lines += [
        "",
        "![accuracy vs cost](accuracy_cost.png)",
        "",
        "![escalation by step](escalation_by_step.png)",
        "",
    ]
    return "\n".join(lines)


def _points_section(cfg: ExperimentConfig, result: EvaluationResult, label: str) -> list[str]:
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
            f"| {p.rule} | {format_metric(p.threshold)} | {p.accuracy:.3f} | "
            f"{p.cost_normalized:.3f} | {p.escalation_rate:.3f} | {p.cost:.4g} |"
        )
    return lines


def _curve_metrics_section(result: EvaluationResult) -> list[str]:
    fmt = format_metric
    lines = [
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
    return lines


def _cost_models_section(result: EvaluationResult) -> list[str]:
    models = [
        c.split("/", 1)[1]
        for c in result.summary.columns
        if c.startswith("cost_at_large_accuracy/")
    ]
    if not models:
        return []
    lines = [
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
        values = " | ".join(format_metric(s.get(f"cost_at_large_accuracy/{m}")) for m in models)
        lines.append(f"| {s['rule']} | {values} |")
    return lines


def _seeds_section(result: EvaluationResult) -> list[str]:
    spread = seed_spread(result.summary)
    if not spread:
        return []
    seeds = seed_rows(result.summary)
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


def _policy_vs_prm_section(result: EvaluationResult) -> list[str]:
    versus = policy_vs_prm(result.results, result.summary)
    if versus is None:
        return []
    fmt = format_metric
    return [
        "",
        "## Policy vs PRM",
        "",
        "The learned policy (the seeds' mean where there are seeds) beside the process-reward-model "
        "router (`prm_threshold`), whose cost includes scoring every draft with the PRM; "
        "APGR and cost@large are also shown as if that scoring were free.",
        "",
        "| | APGR | cost@large | APGR, PRM scoring free | cost@large, PRM scoring free |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| policy | {fmt(versus.policy_apgr)} | {fmt(versus.policy_cost_at_large)} | — | — |",
        f"| prm_threshold | {fmt(versus.prm_apgr)} | {fmt(versus.prm_cost_at_large)} | "
        f"{fmt(versus.prm_apgr_unscored)} | {fmt(versus.prm_cost_at_large_unscored)} |",
        "",
        f"Verdict: {versus.verdict}.",
    ]


def _calibrated_section(
    cfg: ExperimentConfig, result: EvaluationResult, acc_large: float
) -> list[str]:
    policy_dir = policy_folder(cfg)
    folders = dict(result.policies or ({"policy": policy_dir} if policy_dir else {}))
    # Baselines calibrated with `steproute calibrate --rule` (e.g. prm_threshold), too.
    folders |= {
        rule: points_folder(cfg, rule)
        for rule in result.summary.rule.astype(str)
        if rule in CALIBRATED_RULES and rule != "policy"
    }
    # Small-only and large-only accuracy on this split, beside each folder's calibration rows.
    accuracy_here = result.points.drop_duplicates("rule").set_index("rule").accuracy
    lines: list[str] = []
    for name, folder in folders.items():
        calibrated = load_operating_points(folder)
        if not calibrated:
            continue
        rule_points = result.points[result.points.rule == name]
        lines += [
            "",
            f"## Calibrated operating points on this split: `{name}`",
            "",
            "Chosen by `steproute calibrate` on the calibration split"
            + _pool_note(calibrated)
            + "; measured here on held-out problems at exactly their κ. A budget point holds "
            "when its cost here stays within its budget; below budget: how much of the budget "
            "it left unspent here.",
            "",
            f"| point | method | κ | {_cost_header(calibrated)} | calibration accuracy | "
            "cost here | accuracy here | target met here | below budget |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
        ]
        for p, cost, acc, met in calibrated_outcomes(rule_points, calibrated, acc_large):
            knee = " (knee)" if p.knee else ""
            below = p.budget - cost if p.budget is not None else None
            lines.append(
                f"| {p.name}{knee} | {p.method} | {p.kappa:.4g} | {p.expected_cost:.3f} | "
                f"{p.expected_accuracy:.3f} | {cost:.3f} | {acc:.3f} | {'yes' if met else 'NO'} "
                f"| {format_metric(below)} |"
            )
        lines += _splits_compared(Path(folder), accuracy_here)
    return lines


def _cost_header(points) -> str:
    """The calibration cost column: the mean over every problem a budget was tested on, which
    with a budget pool is the split and the pool together (accuracy: the split alone)."""
    return "calibration cost" + (
        " (split + pool)" if any(p.labelled is not None for p in points) else ""
    )


def _pool_note(points) -> str:
    """How many problems the budgets were tested on, where a budget pool added to the split."""
    pooled = [p for p in points if p.labelled is not None]
    if not pooled:
        return ""
    p = pooled[0]
    return (
        f" ({p.labelled:,} problems; the budgets were tested on {p.problems:,}, with "
        f"{p.problems - p.labelled:,} from the budget pool, whose costs need no labels)"
    )


def _splits_compared(folder: Path, accuracy_here: pd.Series) -> list[str]:
    """Small-only and large-only accuracy on the calibration split (from the grid's rows saved
    beside the points) and here (`accuracy_here`, by rule): a point's cost moves with the
    problems' difficulty, since a rule escalates more where the small model fails more often."""
    path = folder / ROWS_FILE
    if not path.exists():
        return []
    rows = pd.read_parquet(path)
    if "labelled" in rows.columns:
        rows = rows[rows.labelled]  # a budget pool's problems have costs only
    compared = []
    for rule in ("small_only", "large_only"):
        there = rows[rows.rule == rule]
        if there.empty or rule not in accuracy_here.index:
            continue
        compared.append(
            f"{rule} {there.correct.mean():.3f} on the {there.problem_id.nunique():,} "
            f"calibration problems and {accuracy_here[rule]:.3f} here"
        )
    if not compared:
        return []
    return [
        "",
        "The two splits, by accuracy: "
        + "; ".join(compared)
        + ". Where the small model fails more often, the same κ escalates more and costs more.",
    ]


def _billed_note(cfg: ExperimentConfig) -> str:
    remote = [m.name for m in cfg.models if m.engine == "openai"]
    return (
        f" Models behind endpoints ({', '.join(remote)}) are charged what their servers billed "
        "(`usage`, cached prompt tokens at the cached-input price)."
        if remote
        else ""
    )


def _notes_section(cfg: ExperimentConfig, result: EvaluationResult) -> list[str]:
    policy_dir = policy_folder(cfg)
    which_policy = (
        "one trained RouterPolicy per seed: "
        + ", ".join(f"`{name}` in `{folder}`" for name, folder in result.policies.items())
        if result.policies
        else f"the trained RouterPolicy in `{policy_dir}`"
        if policy_dir
        else "the hand-set linear RouterPolicy (no trained policy found)"
    )
    ran_policy = any(rule.split("/")[0] == "policy" for rule in result.summary.rule)
    lines = [
        "",
        (f"`policy`: {which_policy}. " if ran_policy else "")
        + "`large_only` makes no drafts; every other rule pays for each draft. "
        "`large_likelihood` asks the large model for prompt logprobs of each draft and pays "
        "for it like any call: prefill of the context the large model has not processed in "
        "this trajectory, plus the draft. Costs are computed from each trajectory alone "
        "(pipeline/cost.py), never from the engines' prefix caches, so they do not depend on "
        "what ran before." + _billed_note(cfg),
    ]
    unscored = int(result.results.get("drafts_without_logprobs", pd.Series(dtype=int)).sum())
    if unscored:
        lines += [
            "",
            f"**Neutral features:** {unscored} kept drafts came back without logprobs (the "
            "server returned none), so for them "
            + ", ".join(f"`{name}`" for name in LOGPROB_FEATURES)
            + " and the first-token entropy were neutral (probability 1, entropy and length 0).",
        ]
    if result.skipped:
        lines += ["", "## Not run", ""]
        lines += [f"- `{name}`: {why}." for name, why in result.skipped.items()]
    return lines


def _runs_section(runs: list[dict]) -> list[str]:
    lines = [
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
    return lines


def write_outputs(cfg: ExperimentConfig, result: EvaluationResult, folder: Path) -> None:
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
        "digest": results_digest(result.results),
    }
    with open(folder / "runs.jsonl", "a") as handle:
        handle.write(json.dumps(run) + "\n")
    runs = [json.loads(line) for line in (folder / "runs.jsonl").read_text().splitlines() if line]
    write_plots(result.points, result.results, folder, label)
    (folder / "report.md").write_text(report_markdown(cfg, result, runs, label))


def log_mlflow(cfg: ExperimentConfig, result: EvaluationResult, folder: Path) -> None:
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
