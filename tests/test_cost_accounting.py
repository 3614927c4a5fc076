"""Cost is a function of the trajectory alone: hand-computed charges through the controller, and
identical per-problem costs whatever the engines' prefix caches held (real engines)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pipeline.config import parse_config
from pipeline.controller import Controller
from pipeline.data import Problem, load_split
from pipeline.engines.types import StepRequest, StepResult
from pipeline.features import Observation
from pipeline.rules import RoutingRule, make_rule
from pipeline.testbed.tokenizer import build_tokenizer


class ScriptedEngine:
    """Writes step k of a fixed script at a context holding k steps (a `StepEngine` whose
    outputs are known in advance, so the charges can be computed by hand)."""

    max_model_len = 512

    def __init__(self, name: str, script: list[str], tokenizer) -> None:
        self.fingerprint = name
        self.script = script
        self.tokenizer = tokenizer
        self.prompt_length: int | None = None
        self.lengths: list[int] = []

    async def generate(self, request: StepRequest) -> StepResult:
        return (await self.generate_batch([request]))[0]

    async def generate_batch(self, requests: list[StepRequest]) -> list[StepResult]:
        results = []
        for request in requests:
            written = len(request.prompt_token_ids) - self.prompt_length
            text = self.script[self.lengths.index(written)]
            ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
            results.append(StepResult(ids, text, (-0.1,) * len(ids)))
        return results


class EscalateStep(RoutingRule):
    def __init__(self, index: int) -> None:
        self.index = index

    def decide(self, obs: Observation) -> np.ndarray:
        return (np.asarray(obs.step_indices) == self.index).astype(np.int64)


def test_a_trajectory_costs_what_hand_computation_says_under_every_cost_model(
    testbed_cfg,
) -> None:
    tokenizer = build_tokenizer()
    cfg = parse_config(testbed_cfg.model_dump(mode="json"))
    small_cfg, large_cfg = cfg.models
    # Step 1's draft is escalated; the large model's step shares its first 6 characters.
    small = ScriptedEngine(
        "s", ["12+3=15 coins.\n\n", "15*2=31 coins.\n\n", "The answer is 30."], tokenizer
    )
    large = ScriptedEngine("l", ["", "15*2=30 coins.\n\n"], tokenizer)
    controller = Controller(
        cfg, {"small": small, "large": large}, {"small": tokenizer, "large": tokenizer}
    )
    problem = Problem(id="p", question="Sam has 12 coins: +3 *2.", gold_answer="30", meta={})
    state = controller.start(problem)
    L = state.prompt_lengths["small"]
    for engine in (small, large):
        engine.prompt_length = L
    small.lengths = [0, 16, 32]  # kept tokens before each of its steps
    large.lengths = [-1, 16]
    asyncio.run(_solve(controller, state, EscalateStep(1)))
    assert [s.model for s in state.steps] == ["small", "large", "small"]
    assert controller.is_correct(state)

    # Small: draft 0 prefills the prompt (L) and writes 16; draft 1 reads L+16 from its cache
    # and writes 16 (discarded); draft 2 still holds L+16 plus "15*2=3" of its discarded draft,
    # so it prefills the other 10 tokens of the large step and writes 17.
    # Large: one call, prefilling everything (L+16) and writing 16.
    ps, pl = small_cfg.cost.parameters, large_cfg.cost.parameters
    assert state.costs["flops"] == pytest.approx(
        2 * ps * (L + 16 + 16 + 10 + 17) + 2 * pl * (L + 16 + 16)
    )
    s, g = small_cfg.cost, large_cfg.cost
    price = (
        s.input_price_per_token * (L + 10)
        + s.cached_input_price_per_token * ((L + 16) + (L + 22))
        + s.output_price_per_token * (16 + 16 + 17)
        + g.input_price_per_token * (L + 16)
        + g.output_price_per_token * 16
    )
    assert state.costs["price"] == pytest.approx(price)
    assert state.costs["tokens"] == 16  # only the large model's generated tokens count
    assert state.cost == state.costs[cfg.routing.cost_model]


async def _solve(controller, state, rule) -> None:
    async for _ in controller.solve(state, rule):
        pass


class CountingEngine:
    """Wraps a real engine and adds up the prompt tokens its prefix cache served."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.fingerprint = engine.fingerprint
        self.max_model_len = engine.max_model_len
        self.cached = 0

    async def generate(self, request: StepRequest) -> StepResult:
        return (await self.generate_batch([request]))[0]

    async def generate_batch(self, requests: list[StepRequest]) -> list[StepResult]:
        results = await self.engine.generate_batch(requests)
        self.cached += sum(r.cached_prompt_tokens for r in results)
        return results


def test_per_problem_costs_do_not_depend_on_what_the_engines_cached(
    testbed_cfg, testbed_engines
) -> None:
    problems = load_split(testbed_cfg.dataset, "calibration")[:24]
    engines = {name: CountingEngine(e) for name, e in testbed_engines.items()}
    controller = Controller(testbed_cfg, engines)
    rule = make_rule("random", p=0.4, seed=3)

    async def cold_then_warm():
        for engine in testbed_engines.values():
            await engine.reset_prefix_cache()
        cold = await controller.run(problems, rule, concurrency=24)
        cold_hits = sum(e.cached for e in engines.values())
        # Other rules warm the prefix caches with the same questions and steps...
        await controller.run(problems, make_rule("large_only"), concurrency=8)
        await controller.run(problems, make_rule("small_only"), concurrency=5)
        before = sum(e.cached for e in engines.values())
        # ...then the same rule again, in another order and batch size.
        warm = await controller.run(list(reversed(problems)), rule, concurrency=7)
        return cold, warm, cold_hits, sum(e.cached for e in engines.values()) - before

    cold, warm, cold_hits, warm_hits = asyncio.run(cold_then_warm())
    warm_by_id = {s.problem.id: s for s in warm}
    for state in cold:
        again = warm_by_id[state.problem.id]
        assert [s.text for s in state.steps] == [s.text for s in again.steps]
        assert state.costs == again.costs, state.problem.id
        assert state.cost == again.cost
    # The engines served more from their prefix caches the second time: cost ignored it.
    assert warm_hits > cold_hits
