"""Training throughput: PPO iterations with 1 and 2 env runners.

Per setting the PPO algorithm is built from the config exactly as `steproute train` builds it
(`rllib_env.train.build_ppo_config`), with a fresh, empty step cache so that every sampled step
is generated. After one warm-up iteration, N iterations are timed from RLlib's own results:
routing decisions (agent steps) and env steps sampled per second, sampling time and learner
update time per iteration.

    python -m benchmarks.training --config configs/testbed.yaml [--quick] [--record]
"""

from __future__ import annotations

import math
import tempfile
import time

from benchmarks.common import Table, connect_ray, label, parse_args, report, start_uncached_engines
from pipeline.config import load_config

# RLlib reports its timers as exponential moving averages over iterations (MetricsLogger.log_time,
# coefficient 0.01), so one reading is mostly the first iteration's. Each iteration's own time is
# recovered from two consecutive readings: x_t = (ema_t - (1 - c) * ema_{t-1}) / c.
TIMER_EMA = 0.01
SAMPLING = "env_runner_sampling_timer"
LEARNING = "learner_update_timer"


def _timers(result: dict) -> dict[str, float]:
    timers = result.get("timers", {})
    return {key: _number(timers.get(key)) for key in (SAMPLING, LEARNING)}


def _number(value) -> float:
    """RLlib reports some counts per agent or module as dicts: their sum."""
    if isinstance(value, dict):
        return float(sum(_number(v) for v in value.values()))
    return float(value) if value is not None else math.nan


def run_setting(args, env_runners: int, iterations: int, cache_dir: str) -> dict[str, float]:
    from rllib_env.train import build_ppo_config

    overrides: dict = {
        "training": {"num_env_runners": env_runners},
        "evaluation": {"cache_dir": cache_dir},
    }
    if args.quick:
        overrides["training"] |= {"train_batch_size": 64, "minibatch_size": 32, "concurrency": 8}
    cfg = load_config(args.config, overrides)
    algo = build_ppo_config(cfg).build_algo()
    try:
        previous = _timers(algo.train())  # warm-up: first sampling, first update
        totals = {"decisions": 0.0, "env_steps": 0.0, "sample_s": 0.0, "learn_s": 0.0, "wall": 0.0}
        for _ in range(iterations):
            started = time.perf_counter()
            result = algo.train()
            totals["wall"] += time.perf_counter() - started
            runners = result.get("env_runners", {})
            totals["decisions"] += _number(runners.get("num_agent_steps_sampled"))
            totals["env_steps"] += _number(runners.get("num_env_steps_sampled"))
            current = _timers(result)
            own = {k: (current[k] - (1 - TIMER_EMA) * previous[k]) / TIMER_EMA for k in current}
            totals["sample_s"] += own[SAMPLING]
            totals["learn_s"] += own[LEARNING]
            previous = current
    finally:
        algo.stop()
    return totals


def main(argv=None) -> None:
    args = parse_args("PPO training throughput with 1 and 2 env runners", argv)
    cfg = args.cfg
    iterations = 1 if args.quick else 3
    started = time.perf_counter()
    connect_ray()
    start_uncached_engines(cfg)  # the shared engine actors the env runners look up
    table = Table(
        f"Training throughput — {label(cfg)}",
        [
            "env runners",
            "iterations",
            "decisions / iteration",
            "decisions/s",
            "env steps/s",
            "sampling s / iteration",
            "learner s / iteration",
            "iteration s",
            "speed-up vs 1 runner",
        ],
    )
    first = None
    for env_runners in (1, 2):
        with tempfile.TemporaryDirectory(prefix="steproute-train-bench-") as cache_dir:
            t = run_setting(args, env_runners, iterations, cache_dir)
        rate = t["decisions"] / t["wall"]
        first = first or rate
        table.add(
            env_runners,
            iterations,
            t["decisions"] / iterations,
            rate,
            t["env_steps"] / t["wall"],
            t["sample_s"] / iterations,
            t["learn_s"] / iterations,
            t["wall"] / iterations,
            f"{rate / first:.2f}x",
        )
        print(f"{env_runners} env runner(s): {rate:.1f} decisions/s", flush=True)
    table.notes = [
        "one decision = one routing step of one problem (an agent step); one env step carries "
        "up to `training.concurrency` of them",
        "step cache empty at the start of each setting; one warm-up iteration not counted",
        "sampling and learner times: RLlib's own timers, per iteration (recovered from its "
        "moving averages); iteration s: wall time of `algo.train()`",
    ]
    report(args, [table], started)


if __name__ == "__main__":
    main()
