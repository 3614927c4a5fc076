"""VLLMEngine on the committed testbed small model (real vLLM; on CPU its engine core runs in
process, stepped by a thread; one test compares it with AsyncLLM's own process)."""

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
    # vLLM's AsyncLLM binds its output loop to the first event loop that uses it: keep one.
    loop = asyncio.new_event_loop()
    yield engine, cfg, loop.run_until_complete
    engine.shutdown()
    pending = asyncio.all_tasks(loop)  # AsyncLLM's output handler: cancel it, close the loop
    for task in pending:
        task.cancel()
    if pending:
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


def test_engine_statistics_follow_the_config(small_engine) -> None:
    """`log_stats: false` (the testbed's) reaches vLLM: no per-step statistics, no stat loggers;
    the default keeps vLLM's."""
    from pipeline.engines.vllm_engine import engine_kwargs

    engine, cfg, _ = small_engine
    assert cfg.models[0].log_stats is False
    core = engine._engine._engine  # the in-process engine's vLLM LLMEngine
    assert core.log_stats is False and core.logger_manager is None
    default = cfg.models[0].model_copy(update={"log_stats": True})
    assert engine_kwargs(default)["disable_log_stats"] is False


def test_batch_mixes_full_contexts_and_live_requests(small_engine) -> None:
    engine, cfg, run = small_engine
    prompt = _prompt(engine, generate_problems(cfg.dataset)[1].question)
    full = StepRequest((5,) * engine.max_model_len, max_tokens=8)
    live = StepRequest(prompt, max_tokens=48, n_logprobs=2)
    results = run(engine.generate_batch([full, live, full]))
    assert [r.finish_reason for r in results] == ["length", "stop", "length"]
    assert results[1] == run(engine.generate(live))  # alone or in a batch: the same step


def test_cancelled_call_aborts_its_requests(small_engine) -> None:
    engine, cfg, run = small_engine
    prompts = [_prompt(engine, p.question) for p in generate_problems(cfg.dataset)[:6]]
    # Whole solutions, not steps: long enough to still be running when the call is cancelled.
    requests = [StepRequest(p, max_tokens=400, stop=()) for p in prompts]

    async def cancel_midway() -> int:
        call = asyncio.ensure_future(engine.generate_batch(requests))
        while engine.unfinished_requests() < len(requests):
            await asyncio.sleep(0.005)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        for _ in range(200):  # the abort takes effect between two engine steps
            if engine.unfinished_requests() == 0:
                return 0
            await asyncio.sleep(0.01)
        return engine.unfinished_requests()

    assert run(cancel_midway()) == 0
    again = run(engine.generate(StepRequest(prompts[0], max_tokens=48)))  # still serving
    assert again.finish_reason == "stop" and again.token_ids


def test_the_engine_core_runs_in_process_on_cpu_unless_the_config_asks() -> None:
    from pipeline.engines.vllm_engine import engine_core_in_process

    small = load_config(REPO / "configs" / "testbed.yaml").models[0]
    assert small.engine_core is None and engine_core_in_process(small)  # no GPU here
    assert not engine_core_in_process(small.model_copy(update={"engine_core": "process"}))
    assert engine_core_in_process(small.model_copy(update={"engine_core": "thread"}))


def test_both_engine_cores_write_the_same_steps(small_engine) -> None:
    """`AsyncLLM` (engine core in its own process) and the in-process core: same tokens and
    logprobs for the same batch."""
    from pipeline.engines.vllm_engine import VLLMEngine

    engine, cfg, run = small_engine
    requests = [
        StepRequest(_prompt(engine, p.question), max_tokens=48, n_logprobs=3)
        for p in generate_problems(cfg.dataset)[:12]
    ]
    other = VLLMEngine(cfg.models[0].model_copy(update={"engine_core": "process"}))
    assert not other.in_process and engine.in_process
    try:
        theirs = run(other.generate_batch(requests))
    finally:
        other.shutdown()
    ours = run(engine.generate_batch(requests))
    for a, b in zip(ours, theirs, strict=True):
        assert a.token_ids == b.token_ids and a.text == b.text
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-5)


def test_two_engines_in_one_process_each_write_their_own_steps_at_once(small_engine) -> None:
    """`start_engines(use_ray=False)` puts a ladder's engines in one process (`evaluate
    --local`, `testbed report`, `train-prm`). vLLM keeps the running forward pass's context in a
    module global: engines stepping at the same time failed ("Forward context is not set", or a
    KeyError for a layer of the large model that the small one lacks). Both working at once, each
    engine writes the steps it writes alone."""
    from pipeline.engines.vllm_engine import VLLMEngine

    engine, cfg, run = small_engine
    large = VLLMEngine(cfg.models[-1])
    assert large.in_process and engine.in_process
    requests = [
        StepRequest(_prompt(engine, p.question), max_tokens=48, n_logprobs=2)
        for p in generate_problems(cfg.dataset)[:48]
    ]

    def tokens(results) -> list[tuple[int, ...]]:
        return [r.token_ids for r in results]

    async def at_once():
        return await asyncio.gather(engine.generate_batch(requests), large.generate_batch(requests))

    try:
        alone = [tokens(run(e.generate_batch(requests))) for e in (engine, large)]
        assert alone[0] != alone[1]  # two different models: a mix-up would show
        for _ in range(3):
            assert [tokens(results) for results in run(at_once())] == alone
    finally:
        large.shutdown()
    # vLLM's shutdown of one engine tore down state the other still uses (its parallel groups).
    assert tokens(run(engine.generate_batch(requests))) == alone[0]


def test_a_failing_engine_step_fails_its_callers_as_a_dead_engine(testbed_cfg) -> None:
    """When vLLM raises inside a step, every waiting caller and every later one gets vLLM's
    `EngineDeadError`, which the engine hosts answer by exiting so Ray or Serve replace them."""
    from pipeline.engines.hosting import engine_dead
    from pipeline.engines.vllm_engine import VLLMEngine

    model = testbed_cfg.models[0].model_copy(update={"engine_core": "thread"})
    engine = VLLMEngine(model)
    try:
        prompt = _prompt(engine, generate_problems(testbed_cfg.dataset)[0].question)
        inner = engine._engine._engine  # vLLM's LLMEngine, stepped by the engine's thread

        def broken_step():
            raise RuntimeError("simulated engine core failure")

        inner.step = broken_step

        async def call():
            return await engine.generate_batch([StepRequest(prompt, max_tokens=8)] * 3)

        for _ in range(2):  # the callers of the failing step, then a later caller
            with pytest.raises(Exception) as failure:
                asyncio.run(call())
            assert engine_dead(failure.value)
        assert engine._engine.errored and engine.unfinished_requests() == 0
    finally:
        engine.shutdown()
