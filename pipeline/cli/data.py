"""`steproute data summary` and `steproute grade`: the benchmark data and graded predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pipeline.cli.console import console, fail
from pipeline.config import load_config
from pipeline.data import SPLITS, split_dataset
from pipeline.grading import grade


def data_summary(
    config: Annotated[
        list[Path], typer.Option("--config", "-c", help="Experiment YAML (repeatable).")
    ],
) -> None:
    """Per-benchmark, per-split problem counts and the file (or hub id) each split comes from."""
    table = Table(title="Benchmark data")
    table.add_column("benchmark")
    table.add_column("split")
    table.add_column("problems", justify="right")
    table.add_column("from", overflow="fold")
    notes: list[str] = []
    for path in config:
        dataset = load_config(path).dataset
        splits = split_dataset(dataset)
        label = dataset.name + (" (synthetic)" if dataset.name == "testbed" else "")
        for split in SPLITS:
            count = f"{len(splits.problems[split]):,}"
            table.add_row(label, split, count, splits.origins[split], end_section=split == "test")
        if dataset.training_source() is not None:
            notes.append(
                f"{dataset.name}: {splits.dropped_overlap} training problem(s) dropped because "
                "their question is also in the test source"
            )
    console.print(table)
    for note in notes:
        console.print(note)


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
        raise fail(f"predictions file not found: {predictions}")
    graded: list[dict] = []
    with predictions.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text, gold = row["prediction"], row["gold"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise fail(
                    f"{predictions}:{line_number}: need a JSON object with 'prediction' and "
                    f"'gold' ({exc!r})"
                ) from None
            result = grade(str(text), str(gold), benchmark or row.get("benchmark"))
            graded.append({**row, "extracted": result.extracted, "correct": result.correct})
    if not graded:
        raise fail(f"{predictions} holds no predictions")
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
