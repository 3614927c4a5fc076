"""The evaluation harness: routing rules × one split → accuracy–cost curves, metrics, report.

Three parts, read in this order: `running` (every rule over the split through one controller),
`summary` (operating points and curve metrics) and `report` (report.md, plots, files, MLflow).

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
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from pipeline.config import ExperimentConfig
from pipeline.controller import Controller
from pipeline.data import load_split
from pipeline.engines.cache import StepCache
from pipeline.evaluation.plots import finish_plot, plot_rule_curves
from pipeline.evaluation.report import (
    TESTBED_LABEL,
    format_metric,
    log_mlflow,
    write_outputs,
)
from pipeline.evaluation.running import (
    EvaluationResult,
    evaluate_with,
    points_folder,
    policy_folder,
    seed_policies,
)
from pipeline.evaluation.summary import (
    calibrated_outcomes,
    operating_points,
    seed_spread,
    summarize,
)

log = logging.getLogger(__name__)

__all__ = [
    "TESTBED_LABEL",
    "EvaluationResult",
    "calibrated_outcomes",
    "evaluate",
    "evaluate_with",
    "finish_plot",
    "format_metric",
    "operating_points",
    "plot_rule_curves",
    "points_folder",
    "policy_folder",
    "seed_policies",
    "seed_spread",
    "summarize",
]


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
            cfg.models_for(rules), use_ray=ev.use_ray, cache=cache, engines=engines
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
    write_outputs(cfg, result, folder)
    if track:
        log_mlflow(cfg, result, folder)
    log.info(
        "evaluation of %d problems took %.1f s; report: %s",
        len(problems),
        wall,
        folder / "report.md",
    )
    return result
