"""The `steproute` command line: the app, every command's name, and the one place where a
user's mistake becomes an error line. Each command lives in its group's module:

- `data`: `data summary`, `grade`
- `testbed`: `testbed train`, `testbed report`, `testbed train-prm`
- `evaluate`: `evaluate`
- `policy`: `train`, `calibrate`
- `jobs`: `serve`, `sweep`, `pipeline`
"""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperGroup

from pipeline.cli.console import fail
from pipeline.cli.data import data_summary, grade_file
from pipeline.cli.evaluate import evaluate_command
from pipeline.cli.jobs import pipeline_command, serve_command, sweep_command
from pipeline.cli.logs import LEVELS, configure_logging
from pipeline.cli.policy import calibrate_command, train_command
from pipeline.cli.testbed import testbed_report, testbed_train, testbed_train_prm
from pipeline.config import ConfigError
from pipeline.data import DataError
from tune_sweeps.spec import SweepSpecError

__all__ = ["app"]

# What a user gave that cannot be used (a config, a data file, a sweep spec): every command
# answers it the same way, one red line and exit code 2, here rather than in each command.
USER_ERRORS = (ConfigError, DataError, SweepSpecError)


class _Commands(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            raise fail(str(exc)) from None


app = typer.Typer(
    cls=_Commands,
    no_args_is_help=True,
    help="Stepwise model routing for cost-effective reasoning.",
)


@app.callback()
def _main(
    ctx: typer.Context,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Same as --log-level debug.")
    ] = False,
    log_level: Annotated[
        str | None,
        typer.Option(
            help=f"What the console shows: {', '.join(LEVELS)} (default: $STEPROUTE_LOG_LEVEL, "
            "else warning: progress, results and warnings; INFO lines go to the log file)."
        ),
    ] = None,
) -> None:
    try:
        configure_logging("debug" if verbose else log_level, ctx.invoked_subcommand)
    except ValueError as exc:
        raise fail(str(exc)) from None


app.command("grade")(grade_file)
app.command("evaluate")(evaluate_command)
app.command("train")(train_command)
app.command("calibrate")(calibrate_command)
app.command("serve")(serve_command)
app.command("sweep")(sweep_command)
app.command("pipeline")(pipeline_command)

data_app = typer.Typer(no_args_is_help=True, help="Benchmark data.")
data_app.command("summary")(data_summary)
app.add_typer(data_app, name="data")

testbed_app = typer.Typer(
    no_args_is_help=True, help="The CPU testbed (synthetic: every number is a testbed number)."
)
testbed_app.command("train")(testbed_train)
testbed_app.command("report")(testbed_report)
testbed_app.command("train-prm")(testbed_train_prm)
app.add_typer(testbed_app, name="testbed")
