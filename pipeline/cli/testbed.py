"""`steproute testbed train`, `testbed report` and `testbed train-prm`: the CPU testbed's models."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from pipeline.cli.console import console, fail
from pipeline.config import load_config
from pipeline.data import load_split


def testbed_train(
    model: Annotated[list[str], typer.Option(help="Which preset(s): small, large.")] = None,  # type: ignore[assignment]
    output: Annotated[Path, typer.Option(help="Folder for the model folders.")] = Path(
        "pipeline/testbed/models"
    ),
    iterations: Annotated[
        int | None, typer.Option(help="Override the preset's iterations.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    threads: Annotated[int, typer.Option(help="torch threads (2 uses both cores here).")] = 2,
) -> None:
    """Train the testbed model pair (takes minutes on 2 cores; the committed pair never needs it)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from pipeline.testbed.train import PRESETS, train_model

    names = model or ["small", "large"]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise fail(f"unknown preset(s) {unknown}; known: {sorted(PRESETS)}")
    for name in names:
        update = {"seed": seed, "threads": threads} | (
            {"iterations": iterations} if iterations else {}
        )
        spec = PRESETS[name].model_copy(update=update)
        console.print(f"[bold]testbed[/] training {name}: {spec.model.model_dump()}")
        with Progress(
            TextColumn(f"{name}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            task = progress.add_task(name, total=spec.iterations, loss=float("nan"))
            record = train_model(
                spec,
                output / name,
                progress=lambda i, n, loss, task=task: progress.update(
                    task, completed=i, loss=loss
                ),
            )
        console.print(
            f"{name}: {record['parameters']:,} parameters, {record['train_seconds'] / 60:.1f} min, "
            f"final loss {record['final_loss']:.4f} -> {output / name}"
        )


def testbed_report(
    config: Annotated[Path, typer.Option("--config", "-c")] = Path("configs/testbed.yaml"),
    problems: Annotated[
        int | None, typer.Option(help="Solve only the first N test-split problems (default: all).")
    ] = None,
    write_card: Annotated[
        bool, typer.Option(help="Rewrite MODEL_CARD.md with these numbers.")
    ] = False,
) -> None:
    """Measure the routing signal: accuracy of each model and the small model's step-error AUROC."""
    from pipeline.testbed_card import write_model_card
    from pipeline.testbed_report import measure, target_checks

    cfg = load_config(config)
    if cfg.dataset.name != "testbed":
        raise fail(f"{config} is not a testbed config (dataset.name is '{cfg.dataset.name}')")
    # The test split: the problems `steproute evaluate` uses, so its small_only and large_only
    # points reproduce these numbers. No testbed problem is ever trained on (train.py).
    held_out = load_split(cfg.dataset, "test")
    if problems is not None and problems > len(held_out):
        raise fail(f"asked for {problems} problems, the test split holds {len(held_out)}")
    held_out = held_out[:problems]
    small, large = cfg.models[0], cfg.models[-1]
    report = asyncio.run(measure(cfg, held_out))

    table = Table(
        title=f"TESTBED routing signal ({len(held_out)} held-out synthetic problems, greedy vLLM)"
    )
    for column in ("measure", "value", "target", ""):
        table.add_column(column)
    for check in target_checks(report, small.name, large.name):
        mark = "[green]ok[/]" if check.met else "[red]MISSED[/]"
        table.add_row(check.measure, check.value, check.target, mark)
    table.add_row(
        "oracle accuracy (every wrong draft escalated)", f"{report.oracle_accuracy:.1%}", "", ""
    )
    for name, cost in report.oracle_cost_at_large.items():
        table.add_row(f"oracle cost at large accuracy -1 pt, {name}", f"{cost:.3f}", "", "")
    console.print(table)
    s, g = report.models[small.name], report.models[large.name]
    console.print(
        f"step accuracy: {small.name} {s.step_accuracy:.1%} over {s.steps} steps, "
        f"{large.name} {g.step_accuracy:.1%} over {g.steps} steps; costs are normalized to "
        "large-only (pipeline/cost.py)",
        soft_wrap=True,
    )
    if write_card:
        models_dir = Path(small.path).parent
        console.print(f"wrote {write_model_card(models_dir, report)}")


def testbed_train_prm(
    config: Annotated[Path, typer.Option("--config", "-c")] = Path("configs/testbed.yaml"),
    problems: Annotated[
        int | None, typer.Option(help="Train on the first N train-split problems (default: all).")
    ] = None,
    test_problems: Annotated[
        int | None, typer.Option(help="Measure on the first N test-split problems (default: all).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for the PRM.")] = Path(
        "pipeline/testbed/models/prm"
    ),
    epochs: Annotated[int | None, typer.Option(help="Override the spec's epochs.")] = None,
    large_drafts: Annotated[
        bool, typer.Option(help="Also train on the large model's drafts of the train problems.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="The language model whose body the PRM starts from (default: the large testbed "
            "model; the small one makes a PRM priced like the small model)."
        ),
    ] = None,
    labels: Annotated[
        str,
        typer.Option(
            help="step_grader (the testbed's grader) or monte_carlo (the large model finishes "
            "after the draft: labels any benchmark can produce)."
        ),
    ] = "step_grader",
) -> None:
    """Train the testbed process reward model on the small model's drafts of the train split
    (labelled by the step grader, or by Monte-Carlo rollouts) and print its step-error AUROC on
    test-split drafts, graded (torch and vLLM)."""
    from pipeline.testbed.prm import PRMSpec
    from pipeline.testbed_prm import train_testbed_prm

    cfg = load_config(config)
    if cfg.dataset.name != "testbed":
        raise fail(f"{config} is not a testbed config (dataset.name is '{cfg.dataset.name}')")
    train, test = load_split(cfg.dataset, "train"), load_split(cfg.dataset, "test")
    for asked, split, name in ((problems, train, "train"), (test_problems, test, "test")):
        if asked is not None and not 0 < asked <= len(split):
            raise fail(f"asked for {asked} {name} problems, the {name} split holds {len(split)}")
    if init_from is not None and not (init_from / "config.json").is_file():
        raise fail(f"--init-from {init_from}: not a model folder (no config.json in it)")
    update = {"seed": seed, "large_drafts": large_drafts} | ({"epochs": epochs} if epochs else {})
    update |= {"init_from": str(init_from)} if init_from is not None else {}
    try:
        spec = PRMSpec(**update, labels=labels)
    except ValidationError as error:
        reason = error.errors()[0]["msg"].removeprefix("Value error, ")
        raise fail(f"train-prm: {reason} (--labels {labels})") from None
    console.print(f"[bold]testbed[/] training the PRM: {spec.model_dump()}")
    report = asyncio.run(
        train_testbed_prm(
            cfg,
            spec,
            out,
            train[:problems],
            test[:test_problems],
            progress=lambda epoch, total, loss, held: console.print(
                f"epoch {epoch}/{total}: loss {loss:.4f}, held-out loss {held:.4f}"
            ),
        )
    )
    console.print(
        f"PRM: {report.parameters:,} parameters, trained in {report.train_seconds / 60:.1f} min "
        f"on {report.train_steps} steps of {report.train_problems} train problems "
        f"({report.train_wrong_steps} wrong) -> {report.folder}"
    )
    console.print(
        f"step-error AUROC on {report.test_steps} steps of {report.test_problems} test problems "
        f"({report.test_wrong_steps} wrong): PRM {report.test_auroc:.3f} (torch), "
        f"{report.vllm_test_auroc:.3f} (vLLM, max |Δp| {report.vllm_max_difference:.1e}); "
        f"small model's confidence {report.confidence_auroc:.3f}; "
        f"held-out train slice {report.validation_auroc:.3f}"
    )
