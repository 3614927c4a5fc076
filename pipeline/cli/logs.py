"""Quiet, useful output: the console shows progress, results and warnings; everything logged at
INFO goes to a file whose path is printed when the command ends.

`--log-level` (or `STEPROUTE_LOG_LEVEL`) sets what reaches the console: `warning` by default;
`info` or `debug` bring back this project's INFO lines and vLLM's and Ray's own. The library
settings are environment variables, set before vLLM, Ray or torch is imported, so the engine
actors and other worker processes that Ray starts from this process inherit them.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
import warnings
from pathlib import Path

from rich.logging import RichHandler

from pipeline.cli.console import err_console

__all__ = ["LEVELS", "RAY_COMMANDS", "RLLIB_COMMANDS", "configure_logging"]

LEVELS = ("debug", "info", "warning", "error")

# What the libraries print when the console is quiet: their errors only. Each stays as a user
# set it in the environment.
_QUIET_LIBRARIES = {
    "VLLM_LOGGING_LEVEL": "ERROR",  # engine start-up banners, per engine and per actor
    "RAY_LOGGER_LEVEL": "warning",  # "Started a local Ray instance", dashboard lines
    "TORCH_CPP_LOG_LEVEL": "ERROR",  # torch's C++ warnings (no Triton on CPU, NUMA binding)
    "TORCH_LOGS": "-torch",  # torch's Python-side warnings ("Triton not available")
    "TQDM_DISABLE": "1",  # progress bars (vLLM's weight loading reads it: engine_kwargs)
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # MLflow's INFO lines on first use of a store
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
}


# Commands that start or join Ray: Ray's own log lines (its warnings too, such as RLlib's
# notes on building an algorithm or the token-auth notice) go to their log file when the console
# is quiet. Ray adds its console handler on import, so these commands import it up front.
RAY_COMMANDS = {"evaluate", "train", "calibrate", "serve", "sweep", "pipeline"}
RLLIB_COMMANDS = {"train", "sweep", "pipeline"}  # RLlib adds a console handler of its own


def configure_logging(level: str | None, command: str | None) -> Path | None:
    """Console at `level` (default: $STEPROUTE_LOG_LEVEL, else warning); this process's INFO
    lines to `runs/logs/steproute-<command>-<time>.log` ($STEPROUTE_LOG_DIR); returns its path."""
    chosen = (level or os.environ.get("STEPROUTE_LOG_LEVEL") or "warning").lower()
    if chosen not in LEVELS:
        raise ValueError(f"--log-level '{chosen}': choose one of {', '.join(LEVELS)}")
    console_level = getattr(logging, chosen.upper())
    if console_level > logging.INFO:
        for name, value in _QUIET_LIBRARIES.items():
            os.environ.setdefault(name, value)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    console = RichHandler(
        console=err_console, show_path=False, show_time=False, level=console_level
    )
    handlers: list[logging.Handler] = [console]
    path = None
    if command:
        folder = Path(os.environ.get("STEPROUTE_LOG_DIR", "runs/logs"))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"steproute-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        to_file = logging.FileHandler(path)
        to_file.setLevel(min(console_level, logging.INFO))
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(to_file)
        atexit.register(lambda: err_console.print(f"log: {path}", style="dim", soft_wrap=True))
    logging.basicConfig(
        level=min(console_level, logging.INFO), format="%(message)s", handlers=handlers, force=True
    )
    if command in RAY_COMMANDS and console_level > logging.INFO:
        import ray  # noqa: F401  (adds Ray's console handler to the "ray" logger)

        _file_logger("ray", handlers[1:])
        if command in RLLIB_COMMANDS:
            import ray.rllib  # noqa: F401  (adds RLlib's to "ray.rllib", which does not propagate)

            _file_logger("ray.rllib", handlers[1:])
    return path


def _file_logger(name: str, files: list[logging.Handler]) -> None:
    """The library logger's console handlers show only its errors; the rest goes to `files`."""
    library = logging.getLogger(name)
    for handler in library.handlers:
        handler.setLevel(logging.ERROR)
    for handler in files:
        library.addHandler(handler)
