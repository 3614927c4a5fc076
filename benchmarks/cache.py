"""Step-cache speed-up: the same epoch over the same problems, first cold, then again.

    evaluation epoch  `Controller.run` over N test problems (what `steproute evaluate` does)
    training epoch    one `StepRoutingEnv` episode over N training problems (what PPO samples)

Each runs three times through a `StepCache` in front of the engines: cold (an empty cache
folder, empty vLLM prefix caches), warm (the same cache object again), and from disk (a new
`StepCache` loaded from the shards the first two flushed, as a new process would). Decisions come
from the `random` rule (15 % escalated, drawn from problem and step), so every repeat asks for
exactly the same steps. Goal: the second epoch >= 20x faster than the first.

    python -m benchmarks.cache --config configs/testbed.yaml [--quick] [--record]
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    Table,
    label,
    parse_args,
    report,
    reset_prefix_caches,
    start_uncached_engines,
    timed,
)
from benchmarks.rollout import ESCALATION, make_env, run_episode
from pipeline.controller import Controller
from pipeline.data import load_split
from pipeline.engines.cache import CachedEngine, StepCache
from pipeline.rules import make_rule


def cached(engines, cache: StepCache) -> dict:
    return {name: CachedEngine(engine, cache) for name, engine in engines.items()}


def evaluation_epoch(cfg, engines, cache: StepCache, problems, rule) -> tuple:
    """(seconds, steps, cache hits, cache misses) of one evaluation over `problems`."""
    controller = Controller(cfg, engines)
    hits, misses = cache.hits, cache.misses
    with timed() as t:
        states = asyncio.run(controller.run(problems, rule, concurrency=cfg.evaluation.concurrency))
    steps = sum(len(s.steps) for s in states)
    return t.seconds, steps, cache.hits - hits, cache.misses - misses


def training_epoch(cfg, engines, cache: StepCache, problems: int, rule) -> tuple:
    """(seconds, steps, cache hits, cache misses) of one env episode over `problems`."""
    env, calls = make_env(cfg, engines, cfg.training.concurrency, problems)
    hits, misses = cache.hits, cache.misses  # after the env's start-up
    run = run_episode(env, calls, rule)
    return run.seconds, run.steps, cache.hits - hits, cache.misses - misses


def measure(table: Table, kind: str, epoch, raw_engines, folder: Path) -> None:
    """Cold, warm and from-disk runs of `epoch(engines, cache)`."""
    cache = StepCache(folder)
    engines = cached(raw_engines, cache)
    reset_prefix_caches(raw_engines)
    runs = [("cold", *epoch(engines, cache)), ("warm", *epoch(engines, cache))]
    cache.flush()
    with timed() as load:
        reloaded = StepCache(folder)
    runs.append(("from disk", *epoch(cached(raw_engines, reloaded), reloaded)))
    cold = runs[0][1]
    for arm, seconds, steps, hits, misses in runs:
        table.add(
            kind,
            arm,
            steps,
            seconds,
            f"{hits / max(1, hits + misses):.1%}",
            f"{cold / seconds:.1f}x",
        )
    table.notes.append(
        f"{kind}: loading the cache from disk ({len(reloaded):,} entries) took "
        f"{load.seconds:.2f} s (not in the epoch time)"
    )


def main(argv=None) -> None:
    args = parse_args("Step-cache speed-up of a repeated epoch", argv)
    cfg = args.cfg
    problems = 16 if args.quick else 256
    started = time.perf_counter()
    raw = start_uncached_engines(cfg)
    rule = make_rule("random", p=ESCALATION, seed=0)
    test = load_split(cfg.dataset, cfg.evaluation.split)[:problems]
    table = Table(
        f"Step-cache speed-up — {label(cfg)}",
        ["epoch", "run", "steps", "wall s", "cache hit rate", "speed-up vs cold"],
    )
    with tempfile.TemporaryDirectory(prefix="steproute-cache-bench-") as tmp:
        measure(
            table,
            f"evaluation ({len(test)} problems)",
            lambda engines, cache: evaluation_epoch(cfg, engines, cache, test, rule),
            raw,
            Path(tmp) / "evaluation",
        )
        measure(
            table,
            f"training ({problems} problems)",
            lambda engines, cache: training_epoch(cfg, engines, cache, problems, rule),
            raw,
            Path(tmp) / "training",
        )
    table.notes.append("goal: the warm epoch >= 20x faster than the cold one")
    report(args, [table], started)


if __name__ == "__main__":
    main()
