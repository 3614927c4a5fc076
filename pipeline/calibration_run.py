"""Calibrating a trained policy on the engines: run it over the κ grid on the calibration split
(`policy_grid`), choose the operating points from those rows (`pipeline.calibration`), and
save them beside the policy (`calibrate_policy`).

`pipeline.calibration` holds the statistics and reads nothing but rows; this module runs the
engines, through the evaluation harness, to produce the rows.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pipeline.calibration import OperatingPoint, choose_points, save_operating_points
from pipeline.controller import Controller
from pipeline.data import load_split
from pipeline.engines.cache import StepCache
from pipeline.engines.launch import engine_pool
from pipeline.evaluation import evaluate_with

__all__ = ["calibrate_policy", "policy_grid"]


def policy_grid(cfg, policy_dir: str | Path, engines: dict | None = None):
    """Run the policy over the κ grid (`calibration.grid_targets`) on the calibration split,
    with the small-only and large-only baselines; returns the per-problem rows (evaluation
    format)."""
    cal = cfg.calibration
    run_cfg = cfg.model_copy(
        update={
            "evaluation": cfg.evaluation.model_copy(
                update={"policy": str(policy_dir), "escalation_targets": cal.grid_targets}
            )
        }
    )
    problems = load_split(cfg.dataset, "calibration")[: cal.limit]
    cache = StepCache(cfg.step_cache_dir)

    async def main():
        use_ray = cfg.evaluation.use_ray
        async with engine_pool(cfg.models, use_ray=use_ray, cache=cache, engines=engines) as live:
            rows, _ = await evaluate_with(run_cfg, Controller(cfg, live), problems, ["policy"])
            return rows

    return asyncio.run(main())


def calibrate_policy(
    cfg, policy_dir: str | Path, engines: dict | None = None
) -> list[OperatingPoint]:
    """Run the policy over a κ grid on the calibration split, pick one operating point per
    budget in `calibration.budgets` and per accuracy target in `calibration.accuracy_targets`
    (fractions of large-only accuracy), save them beside the policy."""
    chosen = choose_points(cfg, policy_grid(cfg, policy_dir, engines))
    save_operating_points(chosen, policy_dir)
    return chosen
