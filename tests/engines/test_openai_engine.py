"""OpenAIEngine against a real `vllm serve` of the testbed small model on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pipeline.engines.openai_engine import OpenAIEngine, OpenAIEngineError
from pipeline.engines.types import StepRequest
from pipeline.prompts import prompt_token_ids

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def vllm_server(testbed_cfg, vllm_serve):
    model = testbed_cfg.models[0]
    with vllm_serve(model) as base:
        yield base, model


def _engine(model, base: str, **kwargs) -> OpenAIEngine:
    return OpenAIEngine(model.model_copy(update={"engine": "openai", "api_base": base}), **kwargs)


def _prompts(testbed_cfg, n: int):
    from transformers import AutoTokenizer

    from pipeline.data import load_split

    tokenizer = AutoTokenizer.from_pretrained(testbed_cfg.models[0].path)
    return [
        tuple(prompt_token_ids(tokenizer, p, "testbed"))
        for p in load_split(testbed_cfg.dataset, "test")[:n]
    ]


def test_openai_engine_matches_the_in_process_engine_token_for_token(
    vllm_server, testbed_cfg, testbed_engines
) -> None:
    base, model = vllm_server
    requests = [StepRequest(p, max_tokens=48, n_logprobs=3) for p in _prompts(testbed_cfg, 6)]

    async def both():
        remote = _engine(model, base)
        try:
            return await remote.generate_batch(requests), await testbed_engines[
                "small"
            ].generate_batch(requests)
        finally:
            await remote.aclose()

    remote, local = asyncio.run(both())
    for r, loc in zip(remote, local, strict=True):
        assert r.token_ids == loc.token_ids and r.text == loc.text
        assert r.finish_reason == loc.finish_reason == "stop"
        assert r.text.endswith("\n\n")  # include_stop_str_in_output reached the server
        assert r.token_logprobs == pytest.approx(loc.token_logprobs, abs=1e-3)
        assert all(len(top) == 3 for top in r.top_logprobs)


def test_openai_engine_scores_a_continuation_by_prompt_logprobs(
    vllm_server, testbed_cfg, testbed_engines
) -> None:
    base, model = vllm_server
    prompt = _prompts(testbed_cfg, 1)[0]
    step = asyncio.run(
        testbed_engines["small"].generate(StepRequest(prompt, max_tokens=48, n_logprobs=1))
    )
    request = StepRequest(prompt + step.token_ids, max_tokens=1, score_tokens=len(step.token_ids))

    async def score():
        remote = _engine(model, base)
        try:
            return await remote.generate(request)
        finally:
            await remote.aclose()

    scored = asyncio.run(score())
    # The model's own greedy step, scored under the same model: the same logprobs.
    assert scored.prompt_logprobs == pytest.approx(step.token_logprobs, abs=1e-3)


@pytest.fixture
def flaky_proxy(vllm_server, openai_proxy):
    """The server behind a proxy that answers the first `failures` requests with 503."""
    base, model = vllm_server
    with openai_proxy(base) as (proxy_base, handler):
        yield proxy_base, model, handler


def test_transient_503s_are_retried_until_the_step_arrives(flaky_proxy, testbed_cfg) -> None:
    base, model, handler = flaky_proxy
    handler.failures = 2
    engine = _engine(model, base, backoff_s=0.01)
    result = asyncio.run(engine.generate(StepRequest(_prompts(testbed_cfg, 1)[0], max_tokens=48)))
    assert engine.retries == 2 and len(result.token_ids) > 0


def test_persistent_failures_give_up_with_a_clear_error(flaky_proxy, testbed_cfg) -> None:
    base, model, handler = flaky_proxy
    handler.failures = 100
    engine = _engine(model, base, backoff_s=0.01, max_retries=2)
    with pytest.raises(OpenAIEngineError, match="giving up after 3 attempts"):
        asyncio.run(engine.generate(StepRequest(_prompts(testbed_cfg, 1)[0], max_tokens=48)))


def test_a_bad_request_fails_at_once_without_retries(vllm_server) -> None:
    base, model = vllm_server
    engine = _engine(model.model_copy(update={"path": "no-such-model"}), base)
    with pytest.raises(OpenAIEngineError, match="HTTP 404"):
        asyncio.run(engine.generate(StepRequest((1, 2, 3), max_tokens=4)))
    assert engine.retries == 0


def test_a_missing_api_key_is_named(testbed_cfg, monkeypatch) -> None:
    monkeypatch.delenv("STEPROUTE_TEST_KEY", raising=False)
    model = testbed_cfg.models[0].model_copy(
        update={
            "engine": "openai",
            "api_base": "http://127.0.0.1:9/v1",
            "api_key_env": "STEPROUTE_TEST_KEY",
        }
    )
    with pytest.raises(ValueError, match="STEPROUTE_TEST_KEY"):
        OpenAIEngine(model)


def _limited(model, **endpoint):
    return model.model_copy(update={"endpoint": model.endpoint.model_copy(update=endpoint)})


def test_the_rate_limiter_keeps_requests_under_its_limit_and_rides_out_429s(
    vllm_server, openai_proxy, testbed_cfg, caplog
) -> None:
    base, model = vllm_server
    requests = [StepRequest(p, max_tokens=48) for p in _prompts(testbed_cfg, 12)]
    with openai_proxy(base) as (proxy, handler):
        # Unlimited, the twelve requests reach the server together...
        asyncio.run(_engine(model, proxy).generate_batch(requests))
        assert handler.most_in_flight > 2
        # ...limited to 2, never more than 2, even while 429s with Retry-After come back.
        handler.most_in_flight, handler.failures, handler.status = 0, 3, 429
        handler.retry_after = "0.25"
        engine = _engine(_limited(model, max_concurrent_requests=2), proxy, backoff_s=30.0)
        with caplog.at_level("WARNING", logger="pipeline.engines.openai_engine"):
            results = asyncio.run(engine.generate_batch(requests))
    assert handler.most_in_flight <= 2 and engine.limiter.most_in_flight <= 2
    assert engine.retries == 3 and all(r.token_ids for r in results)
    waits = [r.getMessage() for r in caplog.records if "HTTP 429" in r.getMessage()]
    assert len(waits) == 3 and all(w.endswith("in 0.2 s") for w in waits)  # Retry-After, not 30 s


def test_tokens_per_minute_holds_a_request_until_the_bucket_refills() -> None:
    import time

    from pipeline.engines.rate_limit import RateLimiter

    limiter = RateLimiter(tokens_per_minute=6000)  # 100 tokens a second

    async def two_calls() -> float:
        async with limiter.slot(6000):  # the whole minute's budget
            pass
        started = time.perf_counter()
        async with limiter.slot(100):  # waits for 100 tokens to flow back in: ~1 s
            pass
        return time.perf_counter() - started

    assert asyncio.run(two_calls()) >= 0.9


def test_a_server_without_logprobs_still_answers_with_one_warning(
    vllm_server, openai_proxy, testbed_cfg, caplog
) -> None:
    base, model = vllm_server
    requests = [StepRequest(p, max_tokens=48, n_logprobs=3) for p in _prompts(testbed_cfg, 4)]
    with openai_proxy(base, strip_logprobs=True) as (proxy, _):
        engine = _engine(model, proxy)
        with caplog.at_level("WARNING", logger="pipeline.engines.openai_engine"):
            results = asyncio.run(engine.generate_batch(requests))
            results += asyncio.run(engine.generate_batch(requests))
    assert all(r.token_ids and not r.token_logprobs and not r.top_logprobs for r in results)
    assert sum("no logprobs" in r.getMessage() for r in caplog.records) == 1


def test_each_step_carries_what_the_server_billed(vllm_server, testbed_cfg) -> None:
    base, model = vllm_server
    request = StepRequest(_prompts(testbed_cfg, 1)[0], max_tokens=48)

    async def twice():
        engine = _engine(model, base)
        try:
            return await engine.generate(request), await engine.generate(request)
        finally:
            await engine.aclose()

    first, second = asyncio.run(twice())
    for result in (first, second):
        prompt, cached, completion = result.billed_tokens
        assert prompt == len(request.prompt_token_ids) and completion == len(result.token_ids)
    # The same prompt again: the server's prefix cache served part of it, and usage says so.
    assert second.billed_tokens[1] > 0 and second.cached_prompt_tokens == second.billed_tokens[1]
