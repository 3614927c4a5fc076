"""What every benchmark script shares: arguments, Ray and engines, timing, tables, RESULTS.md.

Each script measures its own thing and its baselines in the same run, on the same engines, and
prints the ratios side by side. `--record` appends the table to `benchmarks/RESULTS.md` with the
date, the command and a description of the machine; nothing is recorded otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import ExperimentConfig, load_config
from pipeline.engines.types import StepEngine, StepRequest, StepResult

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"

__all__ = [
    "RecordingEngine",
    "Table",
    "connect_ray",
    "label",
    "machine_description",
    "parse_args",
    "percentile",
    "recording",
    "report",
    "reset_prefix_caches",
    "start_uncached_engines",
    "timed",
]


def parse_args(
    description: str, argv: Sequence[str] | None = None, extra=None
) -> argparse.Namespace:
    """--config, --quick, --record; `extra(parser)` adds a script's own arguments."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--config", default="configs/testbed.yaml", help="experiment YAML (models, data)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small version that only checks the script runs"
    )
    parser.add_argument(
        "--record", action="store_true", help=f"append the table to {RESULTS.relative_to(REPO)}"
    )
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    args.cfg = load_config(args.config)
    return args


def label(cfg: ExperimentConfig) -> str:
    """How a result names its benchmark: testbed numbers always say so."""
    if cfg.dataset.name == "testbed":
        return "TESTBED (synthetic arithmetic, tiny models; not a GSM8K/MATH result)"
    return f"{cfg.dataset.name} with {', '.join(m.name for m in cfg.models)}"


# ---------------------------------------------------------------------- Ray and engines


def connect_ray() -> None:
    """Join `RAY_ADDRESS` when set, else start a local Ray with more logical CPUs than cores
    (engine actors mostly wait on their engine; env runners need a CPU each)."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
    else:
        ray.init(num_cpus=max(8, os.cpu_count() or 1), log_to_driver=False)


def start_uncached_engines(cfg: ExperimentConfig, warm_up: int = 4) -> dict[str, StepEngine]:
    """The shared engine actors with no step cache in front: every step is generated. A few
    problems are routed through them first, so that no arm pays for the engines' first calls."""
    from pipeline.controller import Controller
    from pipeline.data import load_split
    from pipeline.engines.launch import start_engines
    from pipeline.rules import make_rule

    connect_ray()
    engines = start_engines(cfg.models, use_ray=True)
    if warm_up:
        problems = load_split(cfg.dataset, "calibration")[:warm_up]
        controller = Controller(cfg, engines)
        asyncio.run(controller.run(problems, make_rule("random", p=0.5), concurrency=warm_up))
    return engines


def reset_prefix_caches(engines: dict[str, StepEngine]) -> None:
    """Empty every engine's vLLM prefix cache, so that each measured arm starts cold."""

    async def reset() -> None:
        for engine in engines.values():
            await engine.reset_prefix_cache()

    asyncio.run(reset())


class RecordingEngine:
    """A `StepEngine` that forwards to another and logs every batch it was asked for, with the
    time spent waiting for it, into a log shared by all the engines of a ladder (the ceiling
    and the replay re-issue these calls)."""

    def __init__(self, name: str, engine: StepEngine, calls: list) -> None:
        self.name = name
        self.engine = engine
        self.fingerprint = engine.fingerprint
        self.max_model_len = engine.max_model_len
        self.calls = calls  # (model name, requests, seconds), in call order

    async def generate(self, request: StepRequest) -> StepResult:
        return (await self.generate_batch([request]))[0]

    async def generate_batch(self, requests: list[StepRequest]) -> list[StepResult]:
        started = time.perf_counter()
        results = await self.engine.generate_batch(requests)
        self.calls.append((self.name, list(requests), time.perf_counter() - started))
        return results

    async def reset_prefix_cache(self) -> None:
        await self.engine.reset_prefix_cache()

    async def close(self) -> None:
        await self.engine.close()


def recording(engines: dict[str, StepEngine]) -> tuple[dict[str, RecordingEngine], list]:
    """`engines` wrapped in `RecordingEngine`s that share one call log."""
    calls: list = []
    return {name: RecordingEngine(name, e, calls) for name, e in engines.items()}, calls


# ---------------------------------------------------------------------- measuring


@dataclass
class Timer:
    seconds: float = 0.0


class timed:  # noqa: N801 - used as a context manager: `with timed() as t: ...; t.seconds`
    def __enter__(self) -> Timer:
        self.timer = Timer()
        self._start = time.perf_counter()
        return self.timer

    def __exit__(self, *exc) -> None:
        self.timer.seconds = time.perf_counter() - self._start


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation; nan for no values."""
    import numpy as np

    return float(np.percentile(values, q)) if len(values) else float("nan")


@dataclass
class Table:
    """A markdown table with a title; printed and, with --record, appended to RESULTS.md."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([_cell(c) for c in cells])

    def markdown(self) -> str:
        lines = [
            "| " + " | ".join(self.columns) + " |",
            "| " + " | ".join("---" for _ in self.columns) + " |",
            *("| " + " | ".join(row) + " |" for row in self.rows),
        ]
        if self.notes:
            lines += ["", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines)

    def show(self) -> None:
        print(f"\n{self.title}\n\n{self.markdown()}\n", flush=True)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # nan
            return "–"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


# ---------------------------------------------------------------------- recording


def machine_description() -> str:
    """CPU, cores, memory, accelerator and the versions that matter, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        pass
    import ray
    import torch
    import vllm

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores{memory}, {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, vLLM {vllm.__version__}, Ray {ray.__version__}"
    )


def report(args, tables: Sequence[Table], started: float) -> None:
    """Print `tables`; with --record also append them under a dated heading to RESULTS.md.
    `started`: the script's `time.perf_counter()` at its start."""
    for table in tables:
        table.show()
    if not args.record:
        return
    wall_seconds = time.perf_counter() - started
    script = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "benchmark"
    command = (
        "python -m benchmarks." + script + " " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    )
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"\n## {script} — {now}\n",
        f"- command: `{command.strip()}`",
        f"- benchmark: {label(args.cfg)}",
        f"- machine: {machine_description()}",
        f"- wall time: {wall_seconds / 60:.1f} min\n",
    ]
    for table in tables:
        parts += [f"### {table.title}\n", table.markdown(), ""]
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n")
    with RESULTS.open("a") as out:
        out.write("\n".join(parts))
    print(f"recorded in {RESULTS.relative_to(REPO)}")
