"""`steproute train` and `steproute calibrate`: the routing policy and its operating points."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pipeline.cli.console import console, fail
from pipeline.cli.options import SetOption, parse_overrides, parse_seeds
from pipeline.config import CALIBRATED_RULES, ExperimentConfig, load_config


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
    set_: SetOption = None,
) -> None:
    """Train the routing policy with RLlib PPO; export it to <output_dir>/policy."""
    import time

    cfg = load_config(config, parse_overrides(set_))
    seed_list = parse_seeds(seeds)
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
    rule: Annotated[
        str | None,
        typer.Option(
            help="The thresholded rule to calibrate (default: routing.rule): policy, or a "
            f"baseline ({', '.join(CALIBRATED_RULES[1:])}), saved to <output_dir>/rules/<rule>."
        ),
    ] = None,
    set_: SetOption = None,
) -> None:
    """Choose a rule's threshold κ per budget / accuracy target on the calibration split."""
    own = {"calibration": {"method": method}} if method else {}
    cfg = load_config(config, parse_overrides(set_, own))
    rule = rule or cfg.routing.rule
    if rule not in CALIBRATED_RULES:
        raise fail(f"--rule '{rule}' cannot be calibrated; choose one of {list(CALIBRATED_RULES)}")
    seed_list = parse_seeds(seeds)
    if seed_list and policy is not None:
        raise fail("give either --policy or --seeds, not both")
    if rule != "policy":
        if seed_list or policy is not None:
            raise fail(f"--policy and --seeds are for the policy, not for --rule {rule}")
        _calibrate_baseline(cfg, rule)
        return
    folders = [cfg.seed_dir(s) / "policy" for s in seed_list] or [
        policy or Path(cfg.output_dir) / "policy"
    ]
    for folder in folders:
        _calibrate_one(cfg, config, folder)


def _calibrate_baseline(cfg: ExperimentConfig, rule: str) -> None:
    from pipeline.calibration_run import calibrate_rule

    if rule == "prm_threshold" and cfg.prm is None:
        raise fail("prm_threshold needs a process reward model; fix: add a `prm:` entry")
    _show_points(cfg, calibrate_rule(cfg, rule), cfg.rule_dir(rule), rule)


def _calibrate_one(cfg: ExperimentConfig, config: Path, policy: Path) -> None:
    from pipeline.calibration_run import calibrate_policy

    if not (policy / "policy.json").exists():
        raise fail(f"no policy in {policy}; fix: run `steproute train --config {config}` first")
    _show_points(cfg, calibrate_policy(cfg, policy), policy, "policy")


def _show_points(cfg: ExperimentConfig, points: list, folder: Path, rule: str) -> None:
    label = "TESTBED" if cfg.dataset.name == "testbed" else cfg.dataset.name
    title = f"Operating points of {rule} ({cfg.calibration.method}, calibration split) — {label}"
    table = Table(title=title)
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
    console.print(f"saved to {folder / 'operating_points.json'}")
