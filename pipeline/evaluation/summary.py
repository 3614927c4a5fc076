"""What the runs measure: operating points (accuracy, normalized cost, escalation rate) and
each rule's curve metrics (pipeline.metrics), every cost model's cost@large, the seeds' spread,
the calibrated points as measured here, and a digest of the per-problem results."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd

from pipeline import metrics
from pipeline.calibration import OperatingPoint

__all__ = [
    "PolicyVsPRM",
    "calibrated_outcomes",
    "policy_vs_prm",
    "operating_points",
    "results_digest",
    "seed_rows",
    "seed_spread",
    "summarize",
]


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


def results_digest(results: pd.DataFrame) -> str:
    columns = ["rule", "threshold", "problem_id", "correct", "cost", "escalated_steps", "trace"]
    text = results[columns].to_json(orient="records")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def seed_rows(summary: pd.DataFrame, prefix: str = "policy/seed-") -> pd.DataFrame:
    return summary[summary.rule.astype(str).str.startswith(prefix)]


def seed_spread(summary: pd.DataFrame, prefix: str = "policy/seed-") -> dict[str, float]:
    """Mean, sample standard deviation, min and max of the seeds' APGR (rules named
    `<prefix><seed>`); empty when the summary has no seeds."""
    apgr = seed_rows(summary, prefix).apgr.astype(float)
    if apgr.empty:
        return {}
    return {
        "seeds": float(len(apgr)),
        "apgr_mean": float(apgr.mean()),
        "apgr_std": float(apgr.std(ddof=1)) if len(apgr) > 1 else 0.0,
        "apgr_min": float(apgr.min()),
        "apgr_max": float(apgr.max()),
    }


def calibrated_outcomes(
    rule_points: pd.DataFrame, calibrated: list[OperatingPoint], acc_large: float
) -> list[tuple[OperatingPoint, float, float, bool]]:
    """Each calibrated point as measured here: (point, normalized cost, accuracy, target met).

    `rule_points`: the points rows of the calibrated rule (the policy, a seed's policy or a
    baseline). The evaluation runs the rule at every calibrated κ itself, so each point is
    looked up by its exact κ: where the policy's scores crowd near 1, neighbouring κ differ in the seventh
    decimal and a tolerance would read one point's row for another."""
    outcomes = []
    for p in calibrated:
        here = rule_points[rule_points.threshold == p.kappa]
        if here.empty:
            continue
        cost, acc = float(here.cost_normalized.iloc[0]), float(here.accuracy.iloc[0])
        outcomes.append((p, cost, acc, p.met(cost, acc, acc_large)))
    return outcomes


COMPARABLE_APGR = 0.02  # "comparable": the policy's APGR within this of the PRM router's or above


@dataclass(frozen=True)
class PolicyVsPRM:
    """The paper's second claim, measured: the policy (the seeds' mean where there are seeds)
    beside the PRM router, cost@large with and without the PRM's scoring cost."""

    policy_apgr: float
    prm_apgr: float
    policy_cost_at_large: float
    prm_cost_at_large: float
    prm_cost_at_large_unscored: float  # as if scoring with the PRM were free
    prm_apgr_unscored: float

    @property
    def verdict(self) -> str:
        gap = self.policy_apgr - self.prm_apgr
        if gap > COMPARABLE_APGR:
            return f"the policy is better (APGR +{gap:.3f})"
        if gap >= -COMPARABLE_APGR:
            return f"comparable (APGR within {COMPARABLE_APGR}: {gap:+.3f})"
        return f"the PRM router is better (APGR {gap:+.3f})"


def policy_vs_prm(results: pd.DataFrame, summary: pd.DataFrame) -> PolicyVsPRM | None:
    """None unless both the PRM router and the policy (or its seeds) ran."""
    rules = summary.rule.astype(str)
    policy = summary[(rules == "policy") | rules.str.startswith("policy/seed-")]
    prm = summary[rules == "prm_threshold"]
    if policy.empty or prm.empty or "apgr" not in summary:
        return None
    unscored = results.assign(cost=results.cost - results.prm_cost)
    _, free = summarize(unscored[unscored.rule.isin(["small_only", "large_only", "prm_threshold"])])
    free_row = free[free.rule == "prm_threshold"].iloc[0]
    return PolicyVsPRM(
        policy_apgr=float(policy.apgr.mean()),
        prm_apgr=float(prm.apgr.iloc[0]),
        policy_cost_at_large=float(policy.cost_at_large_accuracy.mean()),
        prm_cost_at_large=float(prm.cost_at_large_accuracy.iloc[0]),
        prm_cost_at_large_unscored=float(free_row.cost_at_large_accuracy),
        prm_apgr_unscored=float(free_row.apgr),
    )
