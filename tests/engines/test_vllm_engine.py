"""VLLMEngine on the committed testbed small model (real vLLM, in-process engine core)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.engines.types import StepRequest
from pipeline.testbed.tasks import generate_problems
from pipeline.testbed.tokenizer import PROMPT_FORMAT

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_engine():
    from pipeline.engines.vllm_engine import VLLMEngine

    cfg = load_config(REPO / "configs" / "testbed.yaml")
    engine = VLLMEngine(cfg.models[0])
    # AsyncLLM binds its output loop to the first event loop that uses it: keep one.
    loop = asyncio.new_event_loop()
    yield engine, cfg, loop.run_until_complete
    engine.shutdown()
    pending = asyncio.all_tasks(loop)  # vLLM's output handler: cancel it, then close the loop
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()


def _prompt(engine, question: str) -> tuple[int, ...]:
    tokenizer = engine._engine.get_tokenizer()
    return tuple(tokenizer.encode(PROMPT_FORMAT.format(question=question)))


def test_steps_concatenate_to_one_greedy_generation(small_engine) -> None:
    engine, cfg, run = small_engine
    problems = generate_problems(cfg.dataset)[:8]

    async def stepwise(prompt: tuple[int, ...]) -> tuple[int, ...]:
        context = prompt
        for _ in range(cfg.routing.max_steps):
            step = await engine.generate(StepRequest(context, max_tokens=48, n_logprobs=2))
            context = context + step.token_ids
            if step.finish_reason != "stop":
                break
        return context[len(prompt) :]

    async def whole(prompt: tuple[int, ...]) -> tuple[int, ...]:
        result = await engine.generate(StepRequest(prompt, max_tokens=400, stop=()))
        return result.token_ids

    async def main():
        prompts = [_prompt(engine, p.question) for p in problems]
        steps = await asyncio.gather(*(stepwise(p) for p in prompts))
        single = await asyncio.gather(*(whole(p) for p in prompts))
        return steps, single

    steps, single = run(main())
    for stepped, once in zip(steps, single, strict=True):
        # One greedy generation stops at eos; the stepwise one includes the eos token too.
        assert stepped == once


def test_step_result_carries_logprobs_and_cached_prompt_tokens(small_engine) -> None:
    engine, cfg, run = small_engine
    prompt = _prompt(engine, generate_problems(cfg.dataset)[0].question)

    async def twice():
        first = await engine.generate(StepRequest(prompt, max_tokens=48, n_logprobs=3))
        second = await engine.generate(
            StepRequest(prompt + first.token_ids, max_tokens=48, n_logprobs=3)
        )
        return first, second

    first, second = run(twice())
    assert first.text.endswith("\n\n") and first.finish_reason == "stop"
    assert len(first.token_logprobs) == len(first.token_ids)
    assert all(lp <= 0 for lp in first.token_logprobs)
    assert all(len(top) == 3 for top in first.top_logprobs)
    assert second.prompt_tokens == len(prompt) + len(first.token_ids)
    # The second step's prompt starts with the first's: prefix caching serves part of it.
    assert second.cached_prompt_tokens > 0


def test_full_context_returns_empty_length_result(small_engine) -> None:
    engine, _, run = small_engine
    result = run(engine.generate(StepRequest((5,) * engine.max_model_len, max_tokens=8)))
    assert result.token_ids == () and result.finish_reason == "length"


def test_engines_run_eager_on_cpu_unless_the_config_asks_for_compilation() -> None:
    from pipeline.engines.vllm_engine import engine_kwargs

    testbed_small = load_config(REPO / "configs" / "testbed.yaml").models[0]
    assert engine_kwargs(testbed_small)["enforce_eager"] is False  # the testbed asks for it
    unset = testbed_small.model_copy(update={"enforce_eager": None})
    assert engine_kwargs(unset)["enforce_eager"] is True  # this machine has no GPU
