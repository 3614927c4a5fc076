"""The `steproute` command line. Later capabilities add their sub-commands to the same `app`."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from typer.core import TyperGroup

from pipeline.config import ConfigError, load_config
from pipeline.data import SPLITS, DataError, load_problems, load_split, split_problems
from pipeline.grading import grade
from tune_sweeps.spec import SweepSpecError

err_console = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=2)


# What a user gave that cannot be used (a config, a data file, a sweep spec): every command
# answers it the same way, one red line and exit code 2, here rather than in each command.
USER_ERRORS = (ConfigError, DataError, SweepSpecError)


class _Commands(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            raise _fail(str(exc)) from None


app = typer.Typer(
    cls=_Commands,
    no_args_is_help=True,
    help="Stepwise model routing for cost-effective reasoning.",
)
data_app = typer.Typer(no_args_is_help=True, help="Benchmark data.")
app.add_typer(data_app, name="data")
testbed_app = typer.Typer(
    no_args_is_help=True, help="The CPU testbed (synthetic: every number is a testbed number)."
)
app.add_typer(testbed_app, name="testbed")

console = Console()


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
    )


@data_app.command("summary")
def data_summary(
    config: Annotated[
        list[Path], typer.Option("--config", "-c", help="Experiment YAML (repeatable).")
    ],
) -> None:
    """Per-benchmark and per-split problem counts."""
    table = Table(title="Benchmark data")
    for column in ("benchmark", "source", "problems", *SPLITS):
        table.add_column(
            column, justify="right" if column in ("problems", *SPLITS) else "left", overflow="fold"
        )
    for path in config:
        cfg = load_config(path)
        problems = load_problems(cfg.dataset)
        splits = split_problems(problems, cfg.dataset.splits, cfg.dataset.seed)
        dataset = cfg.dataset
        label = dataset.name + (" (testbed, synthetic)" if dataset.name == "testbed" else "")
        source = dataset.source or (f"hf:{dataset.hf_id}" if dataset.hf_id else "generated")
        table.add_row(label, source, str(len(problems)), *(str(len(splits[s])) for s in SPLITS))
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


# Routing-signal targets of the testbed (see pipeline/testbed/models/MODEL_CARD.md).
SMALL_ACCURACY_BAND = (0.50, 0.75)
LARGE_ACCURACY_MIN = 0.96
AUROC_BAND = (0.65, 0.85)
COST_RATIO_MIN = 4.0
REPAIR_RATE_MIN = 0.60


@testbed_app.command("train")
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
        raise _fail(f"unknown preset(s) {unknown}; known: {sorted(PRESETS)}")
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


@testbed_app.command("report")
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
    from pipeline.testbed_report import measure

    cfg = load_config(config)
    if cfg.dataset.name != "testbed":
        raise _fail(f"{config} is not a testbed config (dataset.name is '{cfg.dataset.name}')")
    # The test split: the problems `steproute evaluate` uses, so its small_only and large_only
    # points reproduce these numbers. No testbed problem is ever trained on (train.py).
    held_out = load_split(cfg.dataset, "test")
    if problems is not None and problems > len(held_out):
        raise _fail(f"asked for {problems} problems, the test split holds {len(held_out)}")
    held_out = held_out[:problems]
    small, large = cfg.models[0], cfg.models[-1]
    report = asyncio.run(measure(cfg, held_out))

    def mark(ok: bool) -> str:
        return "[green]ok[/]" if ok else "[red]MISSED[/]"

    s, g = report.models[small.name], report.models[large.name]
    table = Table(
        title=f"TESTBED routing signal ({len(held_out)} held-out synthetic problems, greedy vLLM)"
    )
    for column in ("measure", "value", "target", ""):
        table.add_column(column)
    table.add_row(
        f"{small.name} problem accuracy",
        f"{s.accuracy:.1%}",
        "50-75 %",
        mark(SMALL_ACCURACY_BAND[0] <= s.accuracy <= SMALL_ACCURACY_BAND[1]),
    )
    table.add_row(
        f"{large.name} problem accuracy",
        f"{g.accuracy:.1%}",
        ">= 96 %",
        mark(g.accuracy >= LARGE_ACCURACY_MIN),
    )
    table.add_row(
        f"{small.name} step-error AUROC of -mean logprob",
        f"{s.step_error_auroc:.3f}",
        "0.65-0.85",
        mark(AUROC_BAND[0] <= s.step_error_auroc <= AUROC_BAND[1]),
    )
    table.add_row(
        "per-step cost ratio large/small (parameters)",
        f"{report.cost_ratio:.2f}x",
        ">= 4x",
        mark(report.cost_ratio >= COST_RATIO_MIN),
    )
    table.add_row(
        f"repair rate (first wrong step escalated, {report.repairable} failures)",
        f"{report.repair_rate:.1%}",
        ">= 60 %",
        mark(report.repair_rate >= REPAIR_RATE_MIN),
    )
    table.add_row(
        "oracle accuracy (every wrong draft escalated)", f"{report.oracle_accuracy:.1%}", "", ""
    )
    for name, cost in report.oracle_cost_at_large.items():
        table.add_row(f"oracle cost at large accuracy -1 pt, {name}", f"{cost:.3f}", "", "")
    console.print(table)
    console.print(
        f"step accuracy: {small.name} {s.step_accuracy:.1%} over {s.steps} steps, "
        f"{large.name} {g.step_accuracy:.1%} over {g.steps} steps; costs are normalized to "
        "large-only (pipeline/cost.py)"
    )
    if write_card:
        models_dir = Path(small.path).parent
        console.print(f"wrote {write_model_card(models_dir, report)}")


@app.command("evaluate")
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
) -> None:
    """Run routing rules over a split: accuracy–cost curves, metrics, report, plots, MLflow.
    With --seeds, the `policy` rule runs once per seed and the report adds the seeds' spread."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.evaluation import TESTBED_LABEL, evaluate, format_metric
    from pipeline.rules import RULES

    overrides: dict = {}
    if limit:
        overrides["limit"] = limit
    if local:
        overrides["use_ray"] = False
    cfg = load_config(config, {"evaluation": overrides} if overrides else None)
    seed_list = _seeds(seeds)
    unknown = [r for r in (rule or cfg.evaluation.rules) if r not in RULES]
    if unknown:
        raise _fail(f"unknown rule(s) {unknown}; known: {sorted(RULES)}")
    label = TESTBED_LABEL if cfg.dataset.name == "testbed" else cfg.dataset.name
    console.print(f"[bold]evaluate[/] {cfg.name} — {label}")
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
            result = evaluate(
                cfg,
                rules=rule,
                output_dir=output,
                progress=progress,
                track=not no_mlflow,
                seeds=seed_list or None,
            )
        except (DataError, ValueError) as exc:
            raise _fail(str(exc)) from None
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


def _seeds(text: str | None) -> list[int]:
    """`--seeds 0,1,2` → [0, 1, 2]; a clear error for anything else."""
    if text is None:
        return []
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(
            f"--seeds '{text}': expected comma-separated integers, e.g. 0,1,2"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds '{text}': expected distinct comma-separated integers")
    return seeds


@app.command("train")
def train_command(
    config: Annotated[Path, typer.Option("--config", "-c")] = Path("configs/testbed.yaml"),
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
    iterations: Annotated[int | None, typer.Option(help="Override training.iterations.")] = None,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Skip MLflow logging.")] = False,
    seeds: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated seeds, e.g. 0,1,2: one policy per seed, each in "
            "<output_dir>/seeds/seed-<s>/policy (instead of <output_dir>/policy)."
        ),
    ] = None,
) -> None:
    """Train the routing policy with RLlib PPO; export it to <output_dir>/policy."""
    import time

    cfg = load_config(config)
    seed_list = _seeds(seeds)
    from rllib_env.train import train

    started = time.perf_counter()

    def show(iteration: int, metrics: dict) -> None:
        keys = (
            "rollout/accuracy",
            "rollout/cost_normalized",
            "rollout/escalation_rate",
            "train/cost_weight",
        )
        shown = ", ".join(f"{k.split('/')[1]} {metrics[k]:.3f}" for k in keys if k in metrics)
        console.print(f"iteration {iteration}: {shown} ({time.perf_counter() - started:.0f} s)")

    # One run, or one per seed: its config, its output folder (None: <output_dir>), its label.
    runs = [
        (
            cfg.model_copy(update={"training": cfg.training.model_copy(update={"seed": s})}),
            cfg.seed_dir(s),
            f"seed {s}: ",
        )
        for s in seed_list
    ] or [(cfg, None, "")]
    for run_cfg, output_dir, prefix in runs:
        began = time.perf_counter()
        policy = train(
            run_cfg,
            resume=resume,
            iterations=iterations,
            output_dir=output_dir,
            on_iteration=show,
            track=not no_mlflow,
        )
        minutes = (time.perf_counter() - began) / 60
        console.print(f"{prefix}trained in {minutes:.1f} min; policy: {policy}")


@app.command("calibrate")
def calibrate_command(
    config: Annotated[Path, typer.Option("--config", "-c")] = Path("configs/testbed.yaml"),
    policy: Annotated[
        Path | None, typer.Option(help="Policy folder (default <output_dir>/policy).")
    ] = None,
    method: Annotated[str | None, typer.Option(help="quantile or ltt (default: config's).")] = None,
    seeds: Annotated[
        str | None,
        typer.Option(help="Comma-separated seeds: the policies `steproute train --seeds` wrote."),
    ] = None,
) -> None:
    """Choose the policy's threshold κ per budget / accuracy target on the calibration split."""
    cfg = load_config(config, {"calibration": {"method": method}} if method else None)
    seed_list = _seeds(seeds)
    if seed_list and policy is not None:
        raise _fail("give either --policy or --seeds, not both")
    folders = [cfg.seed_dir(s) / "policy" for s in seed_list] or [
        policy or Path(cfg.output_dir) / "policy"
    ]
    for folder in folders:
        _calibrate_one(cfg, config, folder)


def _calibrate_one(cfg, config: Path, policy: Path) -> None:
    from pipeline.calibration_run import calibrate_policy

    if not (policy / "policy.json").exists():
        raise _fail(f"no policy in {policy}; fix: run `steproute train --config {config}` first")
    points = calibrate_policy(cfg, policy)
    label = "TESTBED" if cfg.dataset.name == "testbed" else cfg.dataset.name
    table = Table(title=f"Operating points ({cfg.calibration.method}, calibration split) — {label}")
    for column in (
        "name",
        "kappa",
        "cost (norm.)",
        "cost interval",
        "accuracy",
        "accuracy interval",
    ):
        table.add_column(column)
    for p in points:
        table.add_row(
            p.name + (" (knee)" if p.knee else ""),
            f"{p.kappa:.4g}",
            f"{p.expected_cost:.3f}",
            f"[{p.cost_interval[0]:.3f}, {p.cost_interval[1]:.3f}]",
            f"{p.expected_accuracy:.3f}",
            f"[{p.accuracy_interval[0]:.3f}, {p.accuracy_interval[1]:.3f}]",
        )
    console.print(table)
    console.print(f"saved to {policy / 'operating_points.json'}")


@app.command("serve")
def serve_command(
    config: Annotated[Path, typer.Option("--config", "-c")] = Path("configs/testbed.yaml"),
    host: Annotated[str | None, typer.Option(help="Bind address (default: serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serve.port).")] = None,
    policy: Annotated[
        str | None, typer.Option(help="Policy folder or 'hand_set' (default: serve.policy).")
    ] = None,
) -> None:
    """Serve the router behind an OpenAI-compatible endpoint (Ray Serve); Ctrl-C stops it."""
    import ray
    from ray import serve

    from serve_app.app import build_app

    overrides: dict = {}
    for key, value in (("host", host), ("port", port), ("policy", policy)):
        if value is not None:
            overrides[key] = value
    args = {"config": str(config), "overrides": {"serve": overrides}}
    cfg = load_config(config, args["overrides"])
    application = build_app(args)
    if not ray.is_initialized():
        ray.init()  # RAY_ADDRESS, when set, joins that cluster
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(application, name="steproute", route_prefix=cfg.serve.route_prefix)
    base = f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route_prefix.rstrip('/')}/v1"
    console.print(
        f"[bold]serving[/] {cfg.name} at {base} (models: GET {base}/models); Ctrl-C stops"
    )
    try:
        import time

        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()


@app.command("sweep")
def sweep_command(
    config: Annotated[Path, typer.Option("--config", "-c")] = Path("configs/testbed.yaml"),
    sweep: Annotated[Path, typer.Option("--sweep", "-s", help="Sweep spec YAML.")] = Path(
        "configs/sweeps/testbed_small.yaml"
    ),
    resume: Annotated[
        bool, typer.Option(help="Restore an interrupted sweep; finished trials are kept.")
    ] = False,
) -> None:
    """Ray Tune over training knobs (λ, budgets, seeds, PPO), then the Pareto front."""
    import os

    import ray

    from pipeline.evaluation import TESTBED_LABEL
    from tune_sweeps.spec import load_sweep
    from tune_sweeps.sweep import SweepInterrupted, run_sweep

    cfg = load_config(config)
    spec = load_sweep(sweep)
    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        # Engines mostly wait on a laptop: give Ray enough logical CPUs for them plus the trials.
        engines = sum(m.resources.num_cpus for m in cfg.models)
        trials = spec.resources.cpus_per_trial * spec.resources.max_concurrent_trials
        ray.init(num_cpus=max(os.cpu_count() or 1, int(math.ceil(engines + trials))))
    label = TESTBED_LABEL if cfg.dataset.name == "testbed" else cfg.dataset.name
    console.print(f"[bold]sweep[/] {spec.name} on {cfg.name} — {label}")
    try:
        outcome = run_sweep(cfg, spec, resume=resume)
    except (SweepInterrupted, FileExistsError) as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(130 if isinstance(exc, SweepInterrupted) else 2) from None
    console.print(
        f"{outcome['trials']} trials ({outcome['stopped_early']} stopped early by ASHA, "
        f"{outcome['calibrated']} calibrated); front: {len(outcome['front'])} points"
    )
    console.print(outcome["front"].to_string(index=False))
    console.print(f"outputs: {outcome['folder']}")


def _overrides(pairs: list[str]) -> dict:
    """`["evaluation.limit=400"]` → `{"evaluation": {"limit": 400}}` (values parsed as YAML)."""
    import yaml

    tree: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise _fail(f"--set takes section.key=value (got {pair!r})")
        *parents, leaf = key.strip().split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return tree


@app.command("pipeline")
def pipeline_command(
    config: Annotated[Path, typer.Option("--config", "-c")] = Path("configs/testbed.yaml"),
    force: Annotated[bool, typer.Option(help="Run every stage, even those up to date.")] = False,
    serve_after: Annotated[
        bool, typer.Option("--serve", help="Deploy the router on Ray Serve at the end.")
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key: section.key=value (YAML value)."),
    ] = None,
) -> None:
    """The main job: baselines, train, calibrate, evaluate (each skipped when up to date)."""
    import time

    import pandas as pd

    from pipeline.evaluation import TESTBED_LABEL, format_metric
    from pipeline.jobs import run_pipeline

    cfg = load_config(config, _overrides(set_ or []))
    label = TESTBED_LABEL if cfg.dataset.name == "testbed" else cfg.dataset.name
    console.print(f"[bold]pipeline[/] {cfg.name} — {label}")
    started = time.perf_counter()
    last: dict[str, float] = {}

    def progress(rule: str, done: int, total: int) -> None:
        if done == total or time.perf_counter() - last.get(rule, 0.0) > 20:
            last[rule] = time.perf_counter()
            console.print(f"  {rule}: {done}/{total} problems")

    def iteration(i: int, metrics: dict) -> None:
        console.print(
            f"  PPO iteration {i}: accuracy {metrics.get('rollout/accuracy', float('nan')):.3f}, "
            f"cost {metrics.get('rollout/cost_normalized', float('nan')):.3f}"
        )

    results = run_pipeline(
        cfg, force=force, say=console.print, progress=progress, on_iteration=iteration
    )
    ran = [r.stage for r in results if not r.skipped]
    console.print(
        f"pipeline finished in {(time.perf_counter() - started) / 60:.1f} min "
        f"(ran: {', '.join(ran) or 'nothing, all up to date'})"
    )
    folder = Path(cfg.output_dir) / "evaluation"
    summary = pd.read_csv(folder / "summary.csv")
    table = Table(title=f"accuracy–cost ({label})")
    for column in ("rule", "auc", "apgr", "cost_at_large_accuracy", "best_accuracy"):
        table.add_column(column)
    columns = ("auc", "apgr", "cost_at_large_accuracy", "best_accuracy")
    for row in summary.itertuples():
        table.add_row(str(row.rule), *(format_metric(getattr(row, c, None)) for c in columns))
    console.print(table)
    console.print(f"report: {folder / 'report.md'}")
    console.print(f"plots:  {folder / 'accuracy_cost.png'}, {folder / 'escalation_by_step.png'}")
    console.print(f"MLflow: mlflow ui --backend-store-uri {cfg.mlflow_uri}")
    console.print(f"serve:  steproute serve --config {config}")
    if serve_after:
        serve_command(config=config, host=None, port=None, policy=None)


if __name__ == "__main__":
    app()
