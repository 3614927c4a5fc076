"""Calibrating a thresholded rule on the engines: run it over the κ grid on the calibration
split (`rule_grid`), choose the operating points from those rows (`pipeline.calibration`), and
save them: beside the policy for the learned policy (`calibrate_policy`), in
`<output_dir>/rules/<rule>` for a baseline such as prm_threshold (`calibrate_rule`). The grid's
per-problem rows go beside them (`calibration_rows.parquet`), so the choice can be audited, or
redone with other budgets, without the engines.

`pipeline.calibration` holds the statistics and reads nothing but rows; this module runs the
engines, through the evaluation harness, to produce the rows.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pipeline.calibration import ROWS_FILE, OperatingPoint, choose_points, save_operating_points
from pipeline.controller import Controller
from pipeline.data import load_budget_pool, load_split
from pipeline.engines.cache import StepCache
from pipeline.engines.launch import engine_pool
from pipeline.evaluation import evaluate_with

__all__ = [
    "calibrate_policy",
    "calibrate_rule",
    "policy_grid",
    "rule_grid",
    "save_calibration_rows",
]


def rule_grid(cfg, rule: str, policy_dir: str | Path | None = None, engines: dict | None = None):
    """Run `rule` over the κ grid (`calibration.grid_targets`: where those fractions of its
    first-pass drafts escalate) on the calibration split, and on the budget pool if one is
    configured, with the small-only and large-only baselines; returns the per-problem rows
    (evaluation format, plus `labelled`: False for a pool problem). `policy_dir`: the policy's
    folder, for rule `policy`."""
    cal = cfg.calibration
    evaluation = {"escalation_targets": cal.grid_targets}
    if policy_dir is not None:
        evaluation["policy"] = str(policy_dir)
    run_cfg = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update=evaluation)})
    problems = load_split(cfg.dataset, "calibration")[: cal.limit]
    pool = load_budget_pool(cal.budget_pool, cfg.dataset)[: cal.limit] if cal.budget_pool else []
    cache = StepCache(cfg.step_cache_dir)

    async def main():
        use_ray = cfg.evaluation.use_ray
        models = cfg.models_for([rule])
        async with engine_pool(models, use_ray=use_ray, cache=cache, engines=engines) as live:
            rows, skipped = await evaluate_with(
                run_cfg, Controller(cfg, live), problems + pool, [rule], traces=False
            )
            if rule in skipped:
                raise ValueError(f"cannot calibrate '{rule}': {skipped[rule]}")
            # The pool's rows count for cost only (`pipeline.calibration.choose_points`).
            rows["labelled"] = ~rows.problem_id.isin({p.id for p in pool})
            return rows

    return asyncio.run(main())


def policy_grid(cfg, policy_dir: str | Path, engines: dict | None = None):
    """`rule_grid` of the trained policy in `policy_dir`."""
    return rule_grid(cfg, "policy", policy_dir, engines)


def calibrate_policy(
    cfg, policy_dir: str | Path, engines: dict | None = None
) -> list[OperatingPoint]:
    """Run the policy over a κ grid on the calibration split, pick one operating point per
    budget in `calibration.budgets` and per accuracy target in `calibration.accuracy_targets`
    (fractions of large-only accuracy), save them beside the policy."""
    rows = policy_grid(cfg, policy_dir, engines)
    chosen = choose_points(cfg, rows)
    save_operating_points(chosen, policy_dir)
    save_calibration_rows(rows, policy_dir)
    return chosen


def calibrate_rule(cfg, rule: str, engines: dict | None = None) -> list[OperatingPoint]:
    """The same for a baseline rule (no policy folder): its points go to `cfg.rule_dir(rule)`,
    where evaluation and `steproute serve` (with `routing.rule: <rule>`) read them."""
    if rule == "policy":
        raise ValueError("calibrate the policy with calibrate_policy(cfg, policy_dir)")
    rows = rule_grid(cfg, rule, engines=engines)
    chosen = choose_points(cfg, rows, rule)
    folder = cfg.rule_dir(rule)
    folder.mkdir(parents=True, exist_ok=True)
    save_operating_points(chosen, folder)
    save_calibration_rows(rows, folder)
    return chosen


def save_calibration_rows(rows, folder: str | Path) -> Path:
    """The grid's per-problem outcomes (no traces) beside the points chosen from them:
    `choose_points(cfg, pandas.read_parquet(path), rule)` chooses them again."""
    path = Path(folder) / ROWS_FILE
    keep = ["rule", "threshold", "problem_id", "correct", "cost"]
    keep += [c for c in rows.columns if c.startswith("cost_") or c == "labelled"]
    rows[keep].to_parquet(path, index=False)
    return path
