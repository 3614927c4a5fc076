"""The chat protocol against a real `vllm serve` of the testbed large model, with the chat
template the project ships for it (configs/testbed_chat_template.jinja): the routed run over a
chat endpoint is token for token the run over the in-Ray engine, and costs what the server
billed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pipeline.config import EndpointConfig
from pipeline.controller import Controller
from pipeline.cost import Charge, call_cost
from pipeline.data import load_split
from pipeline.engines.openai_engine import OpenAIEngine
from pipeline.rules import make_rule

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "configs" / "testbed_chat_template.jinja"
PROBLEMS = 24  # about 60 of their steps escalate to the chat endpoint


@pytest.fixture(scope="module")
def chat_large(testbed_cfg, vllm_serve):
    """The large model's `ModelConfig` as a chat endpoint (prefill), and its server's URL."""
    large = testbed_cfg.models[-1]
    with vllm_serve(large, "--chat-template", str(TEMPLATE), log_name="vllm-serve-chat") as base:
        endpoint = EndpointConfig(protocol="chat", server="vllm", prefill=True)
        yield large.model_copy(update={"engine": "openai", "api_base": base, "endpoint": endpoint})


def _with_large(cfg, large):
    return cfg.model_copy(update={"models": (*cfg.models[:-1], large)})


def _run(controller, problems, rule, closing=None):
    """Run `rule` over `problems`; then close `closing` (an engine) in the same event loop."""

    async def main():
        try:
            return await controller.run(problems, rule, concurrency=PROBLEMS)
        finally:
            if closing is not None:
                await closing.close()

    return asyncio.run(main())


def test_routed_steps_over_chat_are_the_in_ray_engines_steps(
    chat_large, testbed_cfg, testbed_engines
) -> None:
    problems = load_split(testbed_cfg.dataset, "test")[:PROBLEMS]
    rule = make_rule("random", threshold=0.5)  # half the steps escalate, after small drafts
    local = _run(Controller(testbed_cfg, testbed_engines), problems, rule)

    cfg = _with_large(testbed_cfg, chat_large)
    remote_engine = OpenAIEngine(chat_large)
    engines = {**testbed_engines, chat_large.name: remote_engine}
    remote = _run(Controller(cfg, engines), problems, rule, closing=remote_engine)

    compared = 0
    for here, there in zip(local, remote, strict=True):
        assert [s.model for s in here.steps] == [s.model for s in there.steps]
        for a, b in zip(here.steps, there.steps, strict=True):
            assert a.token_ids == b.token_ids and a.text == b.text
            compared += a.model == chat_large.name
        assert here.final_answer == there.final_answer
    assert compared >= 50, f"only {compared} chat-protocol steps compared"


def test_chat_steps_cost_what_the_server_billed(chat_large, testbed_cfg, testbed_engines) -> None:
    problems = load_split(testbed_cfg.dataset, "test")[:4]
    cfg = _with_large(testbed_cfg, chat_large)
    engine = OpenAIEngine(chat_large)
    billed = []
    generate = engine.generate

    async def recording(request):
        result = await generate(request)
        billed.append((request, result))
        return result

    engine.generate = recording
    controller = Controller(cfg, {**testbed_engines, "large": engine})
    states = _run(controller, problems, make_rule("large_only"), closing=engine)
    paid = 0.0
    for request, result in billed:
        prompt, cached, completion = result.billed_tokens
        # The server read exactly the context the in-Ray engine would: same token count.
        assert prompt == len(request.prompt_token_ids) and completion == len(result.token_ids)
        paid += call_cost("price", chat_large, Charge(prompt - cached, cached, completion))
    assert sum(s.cost_by_model["large"] for s in states) == pytest.approx(paid)
    # A prefix-caching server serves later steps' contexts partly from its cache, and says so.
    assert any(result.billed_tokens[1] > 0 for _, result in billed)


def test_without_prefill_a_next_step_instruction_still_gets_one_step(
    chat_large, testbed_cfg, testbed_engines
) -> None:
    instructed = chat_large.model_copy(
        update={"endpoint": chat_large.endpoint.model_copy(update={"prefill": False})}
    )
    engine = OpenAIEngine(instructed)
    problems = load_split(testbed_cfg.dataset, "test")[:2]
    controller = Controller(
        _with_large(testbed_cfg, instructed), {**testbed_engines, "large": engine}
    )
    states = _run(controller, problems, make_rule("large_only"), closing=engine)
    # The testbed model was never taught instructions: only that each call yields one step
    # that stops at the separator (or ends the solution) is checked.
    for state in states:
        assert state.steps and all(s.token_ids for s in state.steps)
        assert all(s.text.endswith("\n\n") for s in state.steps[:-1])
