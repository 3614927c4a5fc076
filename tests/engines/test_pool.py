"""`engine_pool`: engines for an `async with` block, fronted by the step cache, released on exit."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.engines.cache import StepCache
from pipeline.engines.launch import engine_pool
from pipeline.engines.types import StepRequest


def _request() -> StepRequest:
    return StepRequest(prompt_token_ids=(1, 2, 3), max_tokens=4)


def test_given_engines_stay_running_and_the_cache_is_flushed_even_when_the_block_fails(
    testbed_cfg, testbed_engines, tmp_path
) -> None:
    cache = StepCache(tmp_path)

    async def run() -> None:
        async with engine_pool(testbed_cfg.models, cache=cache, engines=testbed_engines) as live:
            assert set(live) == set(testbed_engines)
            await live["small"].generate(_request())
            raise RuntimeError("the block fails")

    with pytest.raises(RuntimeError, match="the block fails"):
        asyncio.run(run())
    assert list(tmp_path.glob("*.parquet"))  # the step it generated was written
    assert len(StepCache(tmp_path)) == 1  # and reads back
    # The caller's engines were not released: they still answer.
    result = asyncio.run(testbed_engines["small"].generate(_request()))
    assert result.token_ids


def test_engines_it_starts_are_released_on_exit(testbed_cfg) -> None:
    async def run():
        async with engine_pool(testbed_cfg.models[:1], use_ray=False) as live:
            engine = live[testbed_cfg.models[0].name]
            assert (await engine.generate(_request())).token_ids
            return engine

    engine = asyncio.run(run())
    assert engine._engine is None  # the in-process vLLM engine was shut down


class CountingEngine:
    """The real engine, counting the requests that reach it."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.requests = 0

    async def generate_batch(self, requests):
        self.requests += len(requests)
        return await self._engine.generate_batch(requests)

    def __getattr__(self, name):
        return getattr(self._engine, name)


def test_a_context_twice_in_one_batch_is_generated_once(testbed_engines) -> None:
    from pipeline.engines.cache import CachedEngine

    counting = CountingEngine(testbed_engines["small"])
    cached = CachedEngine(counting, StepCache())
    same, other = _request(), StepRequest(prompt_token_ids=(4, 5, 6), max_tokens=4)
    sampled = StepRequest(prompt_token_ids=(1, 2, 3), max_tokens=4, temperature=0.7, seed=None)
    results = asyncio.run(cached.generate_batch([same, other, same, sampled, sampled]))
    assert counting.requests == 4  # `same` once; a sampled request is a draw of its own each time
    assert results[2] == results[0] and results[1] != results[0]
    assert asyncio.run(testbed_engines["small"].generate(same)) == results[0]
