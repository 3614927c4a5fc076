"""Rollout throughput of the multi-agent env (`StepRoutingEnv`), in routing steps per second.

For 1, 8, 32 and 64 problems in flight the env works through 2x as many problems (as in
training), and the same steps are generated three more ways:

    ceiling  the raw engines, all of one model's requests of that run in a single batch: no env,
             no controller, no step waiting for the one before it;
    replay   the env's own engine calls re-issued back to back, nothing else: what the env adds
             beyond its engine calls is env time - replay time;
    floor    a one-problem-at-a-time loop (`Controller.run` with concurrency 1).

Decisions come from the `random` rule (15 % of steps escalated, drawn from problem and step), so
every arm takes the same steps; the step cache is off and every arm starts with empty vLLM
prefix caches. Each arm runs `--repeats` times and its fastest run counts: on a shared 2-core
machine one run of the ceiling varies by +-15 %, and interference only ever slows an arm down.
Goal at 64 in flight: env >= 0.8x the ceiling and >= 10x the floor.

    python -m benchmarks.rollout --config configs/testbed.yaml [--quick] [--record] [--repeats 3]
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from benchmarks.common import (
    Table,
    label,
    parse_args,
    recording,
    report,
    reset_prefix_caches,
    start_uncached_engines,
    timed,
)
from pipeline.controller import Controller
from pipeline.data import load_split
from pipeline.features import Observation
from pipeline.rules import make_rule

ESCALATION = 0.15
SPLIT = "train"


@dataclass
class EnvRun:
    steps: int  # routing decisions = kept reasoning steps
    seconds: float
    calls: list  # (model, requests, seconds) per engine call, in order

    @property
    def engine_seconds(self) -> float:
        return sum(seconds for _, _, seconds in self.calls)

    @property
    def mean_batch(self) -> float:
        return sum(len(requests) for _, requests, _ in self.calls) / max(1, len(self.calls))


def make_env(cfg, engines, in_flight: int, problems: int):
    """An env over `problems` training problems, `in_flight` at a time, whose engine calls are
    logged (returns the env and the log)."""
    from rllib_env.env import StepRoutingEnv

    wrapped, calls = recording(engines)
    env = StepRoutingEnv(
        {
            "experiment": cfg.model_dump(mode="json"),
            "engines": wrapped,
            "concurrency": in_flight,
            "episode_problems": problems,
            "split": SPLIT,
        }
    )
    calls.clear()  # the env's start-up (its cost unit) is not part of a rollout
    return env, calls


def run_episode(env, calls: list, rule) -> EnvRun:
    """One env episode with actions from `rule`, timed from `reset` to the last `step`."""
    steps = 0
    with timed() as t:
        obs, _ = env.reset(seed=0)
        while True:
            actions = scripted_actions(env, obs, rule)
            steps += len(actions)
            obs, _, terminated, _, _ = env.step(actions)
            if terminated["__all__"]:
                break
    return EnvRun(steps, t.seconds, list(calls))


def scripted_actions(env, obs: dict, rule) -> dict[str, int]:
    """The rule's actions for the agents that must act (the env tells their problem and step)."""
    deciding = env.deciding()
    agents = list(obs)
    observation = Observation(
        features=np.stack([obs[a] for a in agents]),
        problem_ids=tuple(deciding[a][0] for a in agents),
        step_indices=tuple(deciding[a][1] for a in agents),
    )
    return dict(zip(agents, rule.decide(observation).tolist(), strict=True))


def fastest_episode(engines, env, calls: list, rule, repeats: int) -> EnvRun:
    """The fastest of `repeats` identical episodes (same problems, same decisions)."""
    runs = []
    for _ in range(repeats):
        calls.clear()
        reset_prefix_caches(engines)
        runs.append(run_episode(env, calls, rule))
    return min(runs, key=lambda run: run.seconds)


def _fastest_seconds(engines, generate, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        reset_prefix_caches(engines)
        with timed() as t:
            asyncio.run(generate())
        best = min(best, t.seconds)
    return best


def ceiling_seconds(engines, calls, repeats: int = 1) -> float:
    """Every request of the run, one batch per model."""
    by_model: dict[str, list] = {}
    for model, requests, _ in calls:
        by_model.setdefault(model, []).extend(requests)

    async def generate() -> None:
        for model, requests in by_model.items():
            await engines[model].generate_batch(requests)

    return _fastest_seconds(engines, generate, repeats)


def replay_seconds(engines, calls, repeats: int = 1) -> float:
    """The env's engine calls, in order, with nothing between them."""

    async def generate() -> None:
        for model, requests, _ in calls:
            await engines[model].generate_batch(requests)

    return _fastest_seconds(engines, generate, repeats)


def floor_rate(cfg, engines, problems: int, rule) -> tuple[float, int]:
    """Steps per second of a loop that solves one problem after another."""
    controller = Controller(cfg, engines)
    chosen = load_split(cfg.dataset, SPLIT)[:problems]
    reset_prefix_caches(engines)
    with timed() as t:
        states = asyncio.run(controller.run(chosen, rule, concurrency=1))
    steps = sum(len(s.steps) for s in states)
    return steps / t.seconds, steps


@dataclass
class Level:
    """One number of problems in flight: the env's fastest episode and the rates of its steps."""

    in_flight: int
    problems: int
    run: EnvRun
    ceiling: float  # steps per second
    replay: float

    @property
    def rate(self) -> float:
        return self.run.steps / self.run.seconds


def measure_level(cfg, engines, rule, in_flight: int, problems: int, repeats: int) -> Level:
    """The env at `in_flight`, then its engine calls as the ceiling and as the replay."""
    env, calls = make_env(cfg, engines, in_flight, problems)
    run = fastest_episode(engines, env, calls, rule, repeats)
    ceiling = run.steps / ceiling_seconds(engines, run.calls, repeats)
    replay = run.steps / replay_seconds(engines, run.calls, repeats)
    return Level(in_flight, problems, run, ceiling, replay)


def throughput_table(cfg, levels: list[Level], floor: float) -> Table:
    table = Table(
        f"Rollout throughput — {label(cfg)}",
        [
            "in flight",
            "problems",
            "steps",
            "env steps/s",
            "ceiling steps/s",
            "replay steps/s",
            "env / ceiling",
            "env / floor",
            "mean batch",
            "engine-call time / env time",
        ],
    )
    for level in levels:
        run = level.run
        table.add(
            level.in_flight,
            level.problems,
            run.steps,
            level.rate,
            level.ceiling,
            level.replay,
            f"{level.rate / level.ceiling:.2f}x",
            f"{level.rate / floor:.1f}x",
            run.mean_batch,
            f"{run.engine_seconds / run.seconds:.0%}",
        )
    return table


def main(argv=None) -> None:
    args = parse_args(
        "Rollout throughput of the multi-agent env vs. ceiling and floor",
        argv,
        extra=lambda parser: parser.add_argument(
            "--repeats", type=int, default=3, help="runs per arm; the fastest counts"
        ),
    )
    cfg = args.cfg
    repeats = 1 if args.quick else max(1, args.repeats)
    in_flight_levels = [1, 4] if args.quick else [1, 8, 32, 64]
    floor_problems = 4 if args.quick else 16
    started = time.perf_counter()
    engines = start_uncached_engines(cfg)
    rule = make_rule("random", p=ESCALATION, seed=0)

    floor, floor_steps = floor_rate(cfg, engines, floor_problems, rule)
    levels = []
    for in_flight in in_flight_levels:
        problems = max(2 * in_flight, floor_problems)
        levels.append(measure_level(cfg, engines, rule, in_flight, problems, repeats))
        print(f"{in_flight} in flight: {levels[-1].rate:.1f} steps/s", flush=True)
    table = throughput_table(cfg, levels, floor)
    table.notes = [
        f"floor (one problem at a time, {floor_problems} problems, {floor_steps} steps): "
        f"{floor:.2f} steps/s",
        f"decisions: `random` rule, {ESCALATION:.0%} of steps escalated; step cache off; "
        f"vLLM prefix caches emptied before every run; env, ceiling and replay: the fastest of "
        f"{repeats} runs each",
        "engine-call time / env time: the env's calls summed; over 100 % when the small and "
        "the large engine work at the same time",
        "goal at 64 in flight: env / ceiling >= 0.8x, env / floor >= 10x",
    ]
    report(args, [table], started)


if __name__ == "__main__":
    main()
