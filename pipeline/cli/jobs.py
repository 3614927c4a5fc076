"""`steproute serve`, `sweep` and `pipeline`: the long-running jobs on Ray."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pipeline.cli.console import console, fail
from pipeline.cli.options import SetOption, parse_overrides
from pipeline.config import load_config


def serve_command(
    config: Annotated[Path, typer.Option("--config", "-c")] = Path("configs/testbed.yaml"),
    host: Annotated[str | None, typer.Option(help="Bind address (default: serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serve.port).")] = None,
    policy: Annotated[
        str | None, typer.Option(help="Policy folder or 'hand_set' (default: serve.policy).")
    ] = None,
) -> None:
    """Serve the router behind an OpenAI-compatible endpoint (Ray Serve); Ctrl-C stops it."""
    import os

    import ray

    from serve_app.request_path import port_is_free, use_direct_ingress

    overrides: dict = {}
    for key, value in (("host", host), ("port", port), ("policy", policy)):
        if value is not None:
            overrides[key] = value
    args = {"config": str(config), "overrides": {"serve": overrides}}
    cfg = load_config(config, args["overrides"])
    http_port = cfg.serve.port
    if cfg.serve.ingress == "direct":
        if not port_is_free(cfg.serve.host, cfg.serve.port):
            raise fail(
                f"port {cfg.serve.port} on {cfg.serve.host} is in use: stop what listens there, "
                "or pass --port"
            )
        if os.environ.get("RAY_ADDRESS", "local") != "local" or ray.is_initialized():
            raise fail(
                "serve.ingress: direct is set when Ray starts, and this command joins a running "
                "Ray. Start that cluster with RAY_SERVE_ENABLE_DIRECT_INGRESS=1 (README, "
                "'Serving'), or use serve.ingress: proxy"
            )
        http_port = use_direct_ingress(cfg.serve.port, cfg.serve.host)  # clients: serve.port
    from ray import serve

    from serve_app.app import build_app

    application = build_app(args)
    if not ray.is_initialized():
        ray.init()  # RAY_ADDRESS, when set, joins that cluster
    serve.start(http_options={"host": cfg.serve.host, "port": http_port})
    serve.run(application, name="steproute", route_prefix=cfg.serve.route_prefix)
    base = f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route_prefix.rstrip('/')}/v1"
    console.print(
        f"[bold]serving[/] {cfg.name} at {base} (models: GET {base}/models); Ctrl-C stops"
    )
    _wait_for_stop_signal()
    _drain(cfg.serve.drain_timeout_s, cfg.serve.router_replicas)
    serve.shutdown()
    ray.shutdown()  # a local Ray this command started goes with it; a joined cluster stays
    console.print("stopped")


class _StageLine:
    """The pipeline's progress, one line per stage: "stage baselines: small_only large_only …
    done in 2.7 min" (the rules appear as each starts); training adds one line per PPO
    iteration."""

    def __init__(self) -> None:
        self.open = False  # a stage's line is printed up to its rules, not yet ended
        self.rules: set[str] = set()

    def say(self, message: str) -> None:
        if message.endswith(": running"):
            console.print(message.removesuffix("running"), end="", soft_wrap=True)
            self.open, self.rules = True, set()
            return
        if self.open and message.startswith("stage ") and ": done in" in message:
            console.print(message.split(": ", 1)[1], soft_wrap=True)
            self.open = False
            return
        self._end_line()
        console.print(message, soft_wrap=True)

    def rule(self, shown: str, done: int, total: int) -> None:  # one word per rule, not per κ
        rule = shown.split("@")[0]
        if rule not in self.rules:
            first = not self.rules
            self.rules.add(rule)
            counted = f"{total} problems per operating point: " if first else ""
            console.print(f"{counted}{rule} ", end="", soft_wrap=True)

    def iteration(self, i: int, metrics: dict) -> None:
        self._end_line()
        console.print(
            f"  PPO iteration {i}: accuracy {metrics.get('rollout/accuracy', float('nan')):.3f}, "
            f"cost {metrics.get('rollout/cost_normalized', float('nan')):.3f}"
        )

    def _end_line(self) -> None:
        if self.open:
            console.print()
            self.open = False


def _wait_for_stop_signal() -> None:
    """Block until SIGTERM or SIGINT (Ctrl-C)."""
    import signal
    import threading

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    console.print("stopping: new requests get 503, requests in flight may finish")


def _drain(timeout_s: float, replicas: int) -> None:
    """Ask the router to stop taking requests until none is in flight, for up to `timeout_s`.
    Each call reaches one replica; drained means `replicas` calls in a row found none busy."""
    import time

    from ray import serve

    handle = serve.get_app_handle("steproute")
    deadline = time.monotonic() + timeout_s
    idle_answers = 0
    while time.monotonic() < deadline and idle_answers < max(1, replicas):
        left = handle.drain.remote().result(timeout_s=10)
        idle_answers = idle_answers + 1 if left == 0 else 0
        if left:
            time.sleep(0.2)
    if idle_answers < max(1, replicas):
        console.print(f"drain timeout ({timeout_s:g} s): stopping with requests in flight")


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


def pipeline_command(
    config: Annotated[Path, typer.Option("--config", "-c")] = Path("configs/testbed.yaml"),
    force: Annotated[bool, typer.Option(help="Run every stage, even those up to date.")] = False,
    serve_after: Annotated[
        bool, typer.Option("--serve", help="Deploy the router on Ray Serve at the end.")
    ] = False,
    set_: SetOption = None,
) -> None:
    """The main job: baselines, train, calibrate, evaluate (each skipped when up to date)."""
    import time

    import pandas as pd

    from pipeline.evaluation import TESTBED_LABEL, format_metric
    from pipeline.jobs import run_pipeline

    cfg = load_config(config, parse_overrides(set_))
    label = TESTBED_LABEL if cfg.dataset.name == "testbed" else cfg.dataset.name
    console.print(f"[bold]pipeline[/] {cfg.name} — {label}")
    started = time.perf_counter()
    line = _StageLine()
    results = run_pipeline(
        cfg, force=force, say=line.say, progress=line.rule, on_iteration=line.iteration
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
    for line in (  # paths and commands whole, never folded, so that they can be copied
        f"report: {folder / 'report.md'}",
        f"plots:  {folder / 'accuracy_cost.png'}, {folder / 'escalation_by_step.png'}",
        f"MLflow: mlflow ui --backend-store-uri {cfg.mlflow_uri}",
        f"serve:  steproute serve --config {config}",
    ):
        console.print(line, soft_wrap=True)
    if serve_after:
        serve_command(config=config, host=None, port=None, policy=None)
