"""`steproute evaluate`: routing rules over a split, with progress and the curve metrics."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from pipeline.cli.console import console, fail
from pipeline.cli.options import SetOption, parse_overrides, parse_seeds
from pipeline.config import ExperimentConfig, load_config
from pipeline.data import DataError

if TYPE_CHECKING:
    from pipeline.evaluation import EvaluationResult


def evaluate_command(
    config: Annotated[Path, typer.Option("--config", "-c")] = Path("configs/testbed.yaml"),
    rule: Annotated[
        list[str] | None, typer.Option("--rule", "-r", help="Rule(s) to run (default: config's).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N problems only.")] = None,
    output: Annotated[Path | None, typer.Option(help="Output folder.")] = None,
    local: Annotated[
        bool, typer.Option("--local", help="Engines in this process instead of Ray actors.")
    ] = False,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Skip MLflow logging.")] = False,
    seeds: Annotated[
        str | None,
        typer.Option(help="Comma-separated seeds: the policies `steproute train --seeds` wrote."),
    ] = None,
    set_: SetOption = None,
) -> None:
    """Run routing rules over a split: accuracy–cost curves, metrics, report, plots, MLflow.
    With --seeds, the `policy` rule runs once per seed and the report adds the seeds' spread."""
    from pipeline.evaluation import TESTBED_LABEL, format_metric
    from pipeline.rules import RULES

    overrides: dict = {}
    if limit:
        overrides["limit"] = limit
    if local:
        overrides["use_ray"] = False
    cfg = load_config(config, parse_overrides(set_, {"evaluation": overrides} if overrides else {}))
    seed_list = parse_seeds(seeds)
    unknown = [r for r in (rule or cfg.evaluation.rules) if r not in RULES]
    if unknown:
        raise fail(f"unknown rule(s) {unknown}; known: {sorted(RULES)}")
    label = TESTBED_LABEL if cfg.dataset.name == "testbed" else cfg.dataset.name
    console.print(f"[bold]evaluate[/] {cfg.name} — {label}")
    result = _evaluate_with_progress(cfg, rule, output, not no_mlflow, seed_list)

    table = Table(title=f"Curve metrics — {label}")
    for column in ("rule", "AUC", "APGR", "CPT50", "CPT95", "cost@large", "best acc"):
        table.add_column(column, justify="left" if column == "rule" else "right")
    for s in result.summary.to_dict("records"):
        table.add_row(
            s["rule"],
            *(format_metric(s.get(k)) for k in ("auc", "apgr", "cpt50", "cpt95")),
            format_metric(s["cost_at_large_accuracy"]),
            format_metric(s["best_accuracy"]),
        )
    console.print(table)
    hit = result.cache_stats.get("cache/hit_rate", 0.0)
    console.print(
        f"{result.results.problem_id.nunique()} problems in {result.wall_seconds:.1f} s, "
        f"step-cache hit rate {hit:.1%}; report: {result.output_dir / 'report.md'}"
    )


def _evaluate_with_progress(
    cfg: ExperimentConfig,
    rules: list[str] | None,
    output: Path | None,
    track: bool,
    seeds: list[int],
) -> EvaluationResult:
    """`pipeline.evaluation.evaluate` with one progress bar per rule; its errors as one line."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.evaluation import evaluate

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done)

        try:
            return evaluate(
                cfg,
                rules=rules,
                output_dir=output,
                progress=progress,
                track=track,
                seeds=seeds or None,
            )
        except (DataError, ValueError) as exc:
            raise fail(str(exc)) from None
