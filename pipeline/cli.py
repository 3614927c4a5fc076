"""The `steproute` command line. Later capabilities add their sub-commands to the same `app`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from pipeline.config import ConfigError, load_config
from pipeline.data import SPLITS, DataError, load_problems, split_problems
from pipeline.grading import grade

app = typer.Typer(no_args_is_help=True, help="Stepwise model routing for cost-effective reasoning.")
data_app = typer.Typer(no_args_is_help=True, help="Benchmark data.")
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
    )


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=2)


@data_app.command("summary")
def data_summary(
    config: Annotated[
        list[Path], typer.Option("--config", "-c", help="Experiment YAML (repeatable).")
    ],
) -> None:
    """Per-benchmark and per-split problem counts."""
    table = Table(title="Benchmark data")
    for column in ("config", "benchmark", "source", "problems", *SPLITS):
        table.add_column(column, justify="right" if column in ("problems", *SPLITS) else "left")
    for path in config:
        try:
            cfg = load_config(path)
            problems = load_problems(cfg.dataset)
        except (ConfigError, DataError) as exc:
            raise _fail(str(exc)) from None
        splits = split_problems(problems, cfg.dataset.splits, cfg.dataset.seed)
        dataset = cfg.dataset
        label = dataset.name + (" (testbed, synthetic)" if dataset.name == "testbed" else "")
        source = dataset.source or (f"hf:{dataset.hf_id}" if dataset.hf_id else "generated")
        table.add_row(
            path.name, label, source, str(len(problems)), *(str(len(splits[s])) for s in SPLITS)
        )
    console.print(table)


@app.command("grade")
def grade_file(
    predictions: Annotated[
        Path, typer.Argument(help="JSONL with `prediction` and `gold` per line.")
    ],
    benchmark: Annotated[
        str | None, typer.Option(help="Benchmark name; 'gsm8k' enables the last-number fallback.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Write each row with its verdict here.")
    ] = None,
) -> None:
    """Grade a JSONL file of predictions against gold answers."""
    if not predictions.is_file():
        raise _fail(f"predictions file not found: {predictions}")
    graded: list[dict] = []
    with predictions.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text, gold = row["prediction"], row["gold"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise _fail(
                    f"{predictions}:{line_number}: need a JSON object with 'prediction' and "
                    f"'gold' ({exc!r})"
                ) from None
            result = grade(str(text), str(gold), benchmark or row.get("benchmark"))
            graded.append({**row, "extracted": result.extracted, "correct": result.correct})
    if not graded:
        raise _fail(f"{predictions} holds no predictions")
    correct = sum(r["correct"] for r in graded)
    no_answer = sum(r["extracted"] is None for r in graded)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("".join(json.dumps(r) + "\n" for r in graded), encoding="utf-8")
    table = Table(title=f"Grades: {predictions.name}")
    for column in ("rows", "correct", "accuracy", "no answer found"):
        table.add_column(column, justify="right")
    table.add_row(str(len(graded)), str(correct), f"{correct / len(graded):.1%}", str(no_answer))
    console.print(table)


if __name__ == "__main__":
    app()
