"""Rollout throughput of the multi-agent env (`StepRoutingEnv`), in routing steps per second.

For 1, 8, 32, 64 and 128 problems in flight the env works through `training.problems_per_slot`
times as many problems (as in training: 8x in the testbed config), and the same steps are
generated four more ways:

    ceiling  the raw engines, all of one model's requests of that run in a single batch: no env,
             no controller, no step waiting for the one before it; the faster of the two
             models' batches one after the other and both at the same time;
    replay   the env's own engine calls re-issued back to back, nothing else: what the env adds
             beyond its engine calls is env time - replay time;
    small alone  only the small model's calls of the env, back to back: the small engine at the
             env's batch widths. A problem's next draft needs its previous step, so the env
             cannot make these calls faster, and env / ceiling can reach at most
             (small alone) / ceiling: the limit that the number of problems in flight sets on
             this hardware (a measurement, as noisy as its arms, not a proven bound);
    floor    a one-problem-at-a-time loop (`Controller.run` with concurrency 1), run `--repeats`
             times, the fastest kept.

Decisions come from the `random` rule (15 % of steps escalated, drawn from problem and step), so
every arm takes the same steps; the step cache is off and every arm starts with empty vLLM
prefix caches. A level runs `--repeats` rounds, each the four arms one after another. Rates are
the fastest round's (interference only ever slows an arm down); a ratio is the median of the
rounds' own ratios, with their range: on a shared 2-core machine the speed drifts by 1.5x within
an hour, and arms measured seconds apart share the drift that arms measured minutes apart do not.
Goal at 64 in flight: env >= 0.8x the ceiling and >= 10x the floor. 128 in flight shows what
the next lever, more problems in flight (`training.concurrency`), buys.

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


def _cold_seconds(engines, generate) -> float:
    """Seconds that `generate()` takes, started with empty prefix caches."""
    reset_prefix_caches(engines)
    with timed() as t:
        asyncio.run(generate())
    return t.seconds


def ceiling_seconds(engines, calls) -> float:
    """Every request of the run, one batch per model: the faster of the models one after the
    other and both at once (engines whose core runs in their own process use a second core
    for their output work; one model at a time leaves it to them, both at once shares it)."""
    by_model: dict[str, list] = {}
    for model, requests, _ in calls:
        by_model.setdefault(model, []).extend(requests)

    async def in_turn() -> None:
        for model, requests in by_model.items():
            await engines[model].generate_batch(requests)

    async def at_once() -> None:
        await asyncio.gather(*(engines[m].generate_batch(r) for m, r in by_model.items()))

    return min(_cold_seconds(engines, in_turn), _cold_seconds(engines, at_once))


def replay_seconds(engines, calls) -> float:
    """The env's engine calls, in order, with nothing between them."""

    async def generate() -> None:
        for model, requests, _ in calls:
            await engines[model].generate_batch(requests)

    return _cold_seconds(engines, generate)


@dataclass
class Floor:
    """The one-problem-at-a-time loop, run `len(rates)` times: steps per run, each run's rate."""

    problems: int
    steps: int
    rates: list[float]

    @property
    def fastest(self) -> float:
        return max(self.rates)

    def spread(self) -> str:
        """How the runs ranged, for the table's note ("" for a single run)."""
        if len(self.rates) == 1:
            return ""
        return f", the fastest of {len(self.rates)} runs ({min(self.rates):.2f}-{self.fastest:.2f})"


def measure_floor(cfg, engines, problems: int, rule, repeats: int) -> Floor:
    """Steps per second of a loop that solves one problem after another, `repeats` times (each
    from empty prefix caches): a single run moved 1.6x within an hour."""
    controller = Controller(cfg, engines)
    chosen = load_split(cfg.dataset, SPLIT)[:problems]
    rates, steps = [], 0
    for _ in range(repeats):
        reset_prefix_caches(engines)
        with timed() as t:
            states = asyncio.run(controller.run(chosen, rule, concurrency=1))
        steps = sum(len(s.steps) for s in states)
        rates.append(steps / t.seconds)
    return Floor(problems, steps, rates)


@dataclass
class Round:
    """One round of a level: each arm once, one after another, in steps per second."""

    env: float
    ceiling: float
    replay: float
    small_alone: float


@dataclass
class Level:
    """One number of problems in flight: its fastest episode and every round's rates."""

    in_flight: int
    problems: int
    run: EnvRun  # the fastest episode (every episode takes the same steps)
    rounds: list[Round]

    def fastest(self, arm: str) -> float:
        return max(getattr(r, arm) for r in self.rounds)

    def ratio(self, arm: str) -> str:
        """The median of the rounds' `arm` / ceiling ratios, with their range."""
        ratios = sorted(getattr(r, arm) / r.ceiling for r in self.rounds)
        median = float(np.median(ratios))
        if len(ratios) == 1:
            return f"{median:.2f}x"
        return f"{median:.2f}x [{ratios[0]:.2f}-{ratios[-1]:.2f}]"


def measure_level(cfg, engines, rule, in_flight: int, problems: int, repeats: int) -> Level:
    """`repeats` rounds at `in_flight`: an env episode, then its engine calls as the ceiling, as
    the replay and the small model's alone. Every episode takes the same steps."""
    env, calls = make_env(cfg, engines, in_flight, problems)
    small = cfg.models[0].name
    runs, rounds = [], []
    for _ in range(repeats):
        calls.clear()
        reset_prefix_caches(engines)
        run = run_episode(env, calls, rule)
        drafts = [call for call in run.calls if call[0] == small]
        runs.append(run)
        rounds.append(
            Round(
                env=run.steps / run.seconds,
                ceiling=run.steps / ceiling_seconds(engines, run.calls),
                replay=run.steps / replay_seconds(engines, run.calls),
                small_alone=run.steps / replay_seconds(engines, drafts),
            )
        )
    return Level(in_flight, problems, min(runs, key=lambda run: run.seconds), rounds)


def throughput_table(cfg, levels: list[Level], floor: Floor) -> Table:
    table = Table(
        f"Rollout throughput — {label(cfg)}",
        [
            "in flight",
            "problems",
            "steps",
            "env steps/s",
            "ceiling steps/s",
            "replay steps/s",
            "small alone steps/s",
            "env / ceiling",
            "limit: small alone / ceiling",
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
            level.fastest("env"),
            level.fastest("ceiling"),
            level.fastest("replay"),
            level.fastest("small_alone"),
            level.ratio("env"),
            level.ratio("small_alone"),
            f"{level.fastest('env') / floor.fastest:.1f}x",
            run.mean_batch,
            f"{run.engine_seconds / run.seconds:.0%}",
        )
    return table


def main(argv=None) -> None:
    args = parse_args(
        "Rollout throughput of the multi-agent env vs. ceiling and floor",
        argv,
        extra=lambda parser: parser.add_argument(
            "--repeats", type=int, default=3, help="rounds of the four arms per level"
        ),
    )
    cfg = args.cfg
    repeats = 1 if args.quick else max(1, args.repeats)
    in_flight_levels = [1, 4] if args.quick else [1, 8, 32, 64, 128]
    floor_problems = 4 if args.quick else 16
    started = time.perf_counter()
    engines = start_uncached_engines(cfg)
    rule = make_rule("random", p=ESCALATION, seed=0)

    floor = measure_floor(cfg, engines, floor_problems, rule, repeats)
    levels = []
    for in_flight in in_flight_levels:
        problems = max(cfg.training.problems_per_slot * in_flight, floor_problems)
        levels.append(measure_level(cfg, engines, rule, in_flight, problems, repeats))
        print(f"{in_flight} in flight: {levels[-1].ratio('env')} the ceiling", flush=True)
    table = throughput_table(cfg, levels, floor)
    table.notes = [
        f"floor (one problem at a time, {floor.problems} problems, {floor.steps} steps): "
        f"{floor.fastest:.2f} steps/s{floor.spread()}",
        f"decisions: `random` rule, {ESCALATION:.0%} of steps escalated; step cache off; "
        f"vLLM prefix caches emptied before every run; {repeats} round"
        f"{'s' if repeats != 1 else ''} of the four arms, one "
        "after another: steps/s are the fastest round's, ratios the median of the rounds' "
        "ratios [range]",
        "limit: the small model's calls of the env alone, at the env's batch widths; env / "
        "ceiling cannot exceed it (up to run-to-run noise)",
        "engine-call time / env time: the env's calls summed; over 100 % when the small and "
        "the large engine work at the same time",
        "goal at 64 in flight: env / ceiling >= 0.8x, env / floor >= 10x",
    ]
    report(args, [table], started)


if __name__ == "__main__":
    main()
