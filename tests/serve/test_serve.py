"""The router over real HTTP: Ray Serve, the testbed engines (real vLLM), the official client."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import httpx
import openai
import pytest

from pipeline.calibration import OperatingPoint, save_operating_points
from pipeline.config import ConfigError, load_config
from pipeline.controller import Controller
from pipeline.data import load_split
from pipeline.grading import extract_answer
from pipeline.policy import RouterPolicy
from pipeline.rules import make_rule
from serve_app.request_path import free_port

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "testbed.yaml"
KEY = "test-key-123"


LARGE_ONLY_COST = 2.5e-4  # what the points say large-only cost per problem on calibration


def _point(budget: float, kappa: float) -> OperatingPoint:
    return OperatingPoint(
        f"budget-{budget}",
        kappa,
        "ltt",
        budget / 2,
        (0.0, budget),
        0.7,
        (0.6, 0.8),
        100,
        large_only_cost=LARGE_ONLY_COST,
    )


@pytest.fixture(scope="module")
def policy_folder(tmp_path_factory) -> Path:
    """The hand-set policy with two operating points: one that rarely escalates, one that
    escalates often (the κ values, not the expected costs, are what the router uses)."""
    folder = tmp_path_factory.mktemp("policy")
    RouterPolicy.hand_set().save(folder)
    # The testbed small model is confident, so the hand-set policy's probabilities sit low (5 %
    # of steps reach 0.05); its least possible probability is sigmoid(-5) = 0.0067, so kappa
    # 0.002 escalates every step and 0.95 almost none.
    save_operating_points([_point(0.3, 0.95), _point(0.7, 0.002)], folder)
    return folder


@pytest.fixture(scope="module")
def server(ray_session, policy_folder):
    """One Serve instance on a free port: the open app at / and, sharing its engines, an app
    with API keys and a small capacity at /secure."""
    from ray import serve

    from serve_app.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    common = {"policy": str(policy_folder), "request_timeout_s": 20, "max_request_bytes": 8192}
    serve.run(
        build_app({"config": str(CONFIG), "overrides": {"serve": common}}),
        name="steproute",
        route_prefix="/",
    )
    secure = common | {"auth": {"mode": "on", "api_keys": [KEY]}, "max_ongoing_requests": 2}
    serve.run(
        build_app(
            {"config": str(CONFIG), "overrides": {"serve": secure}, "engines_app": "steproute"}
        ),
        name="secure",
        route_prefix="/secure",
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while httpx.get(f"{base}/health", timeout=60).status_code != 200:
        assert time.time() < deadline, "the router never became healthy"
        time.sleep(1)
    yield base
    serve.delete("secure")
    serve.delete("steproute")


@pytest.fixture(scope="module")
def problems(testbed_cfg):
    return load_split(testbed_cfg.dataset, "test")[:8]


def _client(server: str, prefix: str = "", key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}{prefix}/v1", api_key=key, max_retries=0)


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    assert "Traceback" not in response.text
    return body["error"]


def test_openai_client_gets_the_evaluations_answers(server, problems, testbed_cfg, testbed_engines):
    client = _client(server)
    # The same problems through the evaluation's controller, small only and large only.
    controller = Controller(testbed_cfg, testbed_engines)
    expected = {
        rule: asyncio.run(controller.run(problems[:3], make_rule(rule)))
        for rule in ("small_only", "large_only")
    }
    for model, rule in (("small", "small_only"), ("large", "large_only")):
        for problem, state in zip(problems[:3], expected[rule], strict=True):
            reply = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": problem.question}]
            )
            assert reply.choices[0].message.content == state.solution
            assert reply.choices[0].finish_reason == "stop"
            routing = reply.model_dump()["routing"]
            assert routing["totals"][testbed_cfg.models[0 if model == "small" else 1].name]
            assert reply.usage.completion_tokens == sum(
                t["tokens"] for t in routing["totals"].values()
            )
    # Routed: the answer is graded like the evaluation's and the totals add up to usage.
    reply = client.chat.completions.create(
        model="router-b0.70", messages=[{"role": "user", "content": problems[0].question}]
    )
    body = reply.model_dump()
    routing = body["routing"]
    assert sum(s["tokens"] for s in routing["steps"]) == reply.usage.completion_tokens
    assert sum(t["tokens"] for t in routing["totals"].values()) == reply.usage.completion_tokens
    assert sum(s["cost"] for s in routing["steps"]) == pytest.approx(routing["cost"])
    assert sum(t["cost"] for t in routing["totals"].values()) == pytest.approx(routing["cost"])
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert all(0 <= s["escalation_probability"] <= 1 for s in routing["steps"])
    assert extract_answer(reply.choices[0].message.content, "testbed") is not None


def test_stream_sends_one_chunk_per_step_and_equals_the_plain_answer(server, problems):
    client = _client(server)
    messages = [{"role": "user", "content": problems[1].question}]
    plain = client.chat.completions.create(model="router-b0.70", messages=messages)
    chunks = list(
        client.chat.completions.create(
            model="router-b0.70",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    steps = [c.model_dump()["routing_step"] for c in chunks if "routing_step" in c.model_dump()]
    assert len(steps) == len(plain.model_dump()["routing"]["steps"])
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals and finals[-1].choices[0].finish_reason == plain.choices[0].finish_reason

    completion = client.completions.create(model="small", prompt=problems[1].question)
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model="small", prompt=problems[1].question, stream=True)
        if c.choices
    )
    assert streamed == completion.choices[0].text


def test_operating_points_give_different_escalation_rates(server, problems):
    async def rate(model: str, routing: dict | None = None) -> tuple[float, list[dict]]:
        client = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="x", max_retries=0)
        extra = {"routing": routing} if routing else None
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": p.question}],
                    extra_body=extra,
                )
                for p in problems
            )
        )
        bodies = [r.model_dump()["routing"] for r in replies]
        steps = sum(len(b["steps"]) for b in bodies)
        escalated = sum(s["escalated"] for b in bodies for s in b["steps"])
        return escalated / steps, bodies

    low, _ = asyncio.run(rate("router-b0.30"))
    high, _ = asyncio.run(rate("router-b0.70"))
    assert high > low + 0.2, (low, high)
    every, _ = asyncio.run(rate("router", {"kappa": 0.0}))
    assert every == 1.0
    _, bodies = asyncio.run(rate("router", {"budget": 0.5}))  # largest calibrated budget ≤ 0.5
    assert {b["operating_point"] for b in bodies} == {"budget-0.3"}


def test_models_endpoint_lists_every_operating_point(server):
    ids = {m.id for m in _client(server).models.list()}
    assert ids == {"small", "large", "router", "router-b0.30", "router-b0.70"}


def test_bad_requests_get_openai_errors_with_the_right_status(server, testbed_cfg):
    url = f"{server}/v1/chat/completions"
    ok = {"model": "router", "messages": [{"role": "user", "content": "Sam has 3 coins."}]}
    post = httpx.Client(timeout=60).post
    _error(post(url, content=b"{not json", headers={"content-type": "application/json"}), 400)
    _error(post(url, json={"model": "router"}), 400)  # no messages
    _error(post(url, json=[1, 2]), 400)
    _error(post(url, json=ok | {"n": 2}), 400)
    _error(post(url, json=ok | {"temperature": 0.7}), 400)
    _error(post(url, json=ok | {"max_tokens": 10**6}), 400)
    _error(post(url, json=ok | {"routing": {"budget": 0.5, "kappa": 0.5}}), 400)
    _error(post(url, json=ok | {"routing": {"budget": 0.1}}), 400)  # below every point
    _error(post(url, json=ok | {"model": "small", "routing": {"kappa": 0.5}}), 400)
    _error(post(url, json=ok | {"messages": [{"role": "system", "content": "hi"}]}), 400)
    assert _error(post(url, json=ok | {"model": "gpt-9"}), 404)["code"] == "model_not_found"
    _error(post(f"{server}/v1/nothing-here", json=ok), 404)
    huge = ok | {"messages": [{"role": "user", "content": "9" * 20000}]}
    _error(post(url, json=huge), 413)
    long = ok | {"messages": [{"role": "user", "content": "1+" * 2000}]}  # < 8 KiB, > 256 tokens
    assert _error(post(url, json=long), 422)["code"] == "context_length_exceeded"
    # Nothing was lost: the same router still answers.
    assert post(url, json=ok).status_code == 200


def test_auth_is_off_on_loopback_and_on_when_asked(server, problems):
    question = [{"role": "user", "content": problems[0].question}]
    with pytest.raises(openai.AuthenticationError):
        _client(server, "/secure").chat.completions.create(model="router", messages=question)
    with pytest.raises(openai.AuthenticationError):
        _client(server, "/secure", key="wrong").models.list()
    reply = _client(server, "/secure", key=KEY).chat.completions.create(
        model="router", messages=question
    )
    assert reply.choices[0].message.content
    no_header = httpx.post(f"{server}/secure/v1/chat/completions", json={}, timeout=30)
    assert _error(no_header, 401)["code"] == "invalid_api_key"


def test_auth_turns_on_off_loopback_and_needs_a_key(monkeypatch):
    from serve_app.app import api_keys, auth_required

    cfg = load_config(CONFIG, {"serve": {"host": "0.0.0.0"}})
    assert auth_required(cfg)
    monkeypatch.delenv("STEPROUTE_API_KEYS", raising=False)
    with pytest.raises(ConfigError, match="STEPROUTE_API_KEYS"):
        api_keys(cfg)
    monkeypatch.setenv("STEPROUTE_API_KEYS", "a, b")
    assert api_keys(cfg) == ["a", "b"]
    assert not auth_required(load_config(CONFIG, {"serve": {"host": "::1"}}))
    assert api_keys(load_config(CONFIG)) == []


def test_missing_policy_fails_before_anything_starts(tmp_path):
    from serve_app.app import build_app

    with pytest.raises(ConfigError, match="steproute train"):
        build_app({"config": str(CONFIG), "overrides": {"serve": {"policy": str(tmp_path)}}})


def test_32_concurrent_requests_all_answered_and_overload_gets_429(server, problems):
    async def fire(base: str, count: int, headers: dict) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=300) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{base}/v1/chat/completions",
                        json={
                            "model": "router-b0.70",
                            "messages": [
                                {"role": "user", "content": problems[i % len(problems)].question}
                            ],
                        },
                        headers=headers,
                    )
                    for i in range(count)
                )
            )

    answers = asyncio.run(fire(server, 32, {}))
    assert [r.status_code for r in answers] == [200] * 32
    by_problem: dict[int, set[str]] = {}
    for i, r in enumerate(answers):
        by_problem.setdefault(i % len(problems), set()).add(
            r.json()["choices"][0]["message"]["content"]
        )
    assert all(len(texts) == 1 for texts in by_problem.values())  # batching changes nothing

    crowded = asyncio.run(fire(f"{server}/secure", 12, {"Authorization": f"Bearer {KEY}"}))
    codes = sorted(r.status_code for r in crowded)
    assert 200 in codes and 429 in codes and set(codes) <= {200, 429}
    for r in crowded:
        if r.status_code == 429:
            assert _error(r, 429)["type"] == "rate_limit_error"


def test_killed_engine_replica_recovers(server, problems):
    """SIGKILL the small engine (its vLLM core process, or the replica when the core runs in
    process): the replica fails, Serve replaces it, requests in
    between get 503 (never a stack trace), and later requests succeed."""
    from ray import serve

    handle = serve.get_deployment_handle("engine-small", app_name="steproute")
    before = handle.info.remote().result(timeout_s=60)
    for pid in before["engine_pids"]:
        os.kill(pid, signal.SIGKILL)
    body = {"model": "small", "messages": [{"role": "user", "content": problems[2].question}]}
    deadline = time.time() + 300
    failures = []
    while True:
        response = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=120)
        if response.status_code == 200:
            break
        failures.append(_error(response, 503)["code"])
        assert time.time() < deadline, f"no recovery; errors: {failures}"
        time.sleep(2)
    after = handle.info.remote().result(timeout_s=60)
    assert after["pid"] != before["pid"]  # a new replica
    assert json.loads(response.text)["choices"][0]["message"]["content"]


def test_router_metrics_reach_prometheus(server, ray_session, problems):
    """The router's Serve metrics are exported in Prometheus format by Ray's metrics agent."""
    _client(server).chat.completions.create(
        model="router-b0.70", messages=[{"role": "user", "content": problems[3].question}]
    )
    node = ray_session._private.worker.global_worker.node
    url = f"http://127.0.0.1:{node.metrics_export_port}/metrics"
    wanted = {
        "ray_steproute_requests_total",
        "ray_steproute_steps_total",
        "ray_steproute_step_latency_ms_count",
        "ray_steproute_cost_per_request_count",
    }
    deadline = time.time() + 90
    while True:
        names = {line.split("{")[0] for line in httpx.get(url, timeout=30).text.splitlines()}
        if wanted <= names or time.time() > deadline:
            break
        time.sleep(3)
    assert wanted <= names, sorted(n for n in names if "steproute" in n)


@pytest.fixture(scope="module")
def prm_server(server, tmp_path_factory):
    """A second router on the same Serve instance, at /prm, routing with `prm_threshold`
    (`routing.rule`) and its own engine deployments: small, large and the testbed PRM."""
    from ray import serve

    from serve_app.app import build_app

    out = tmp_path_factory.mktemp("prm_run")
    cfg = load_config(CONFIG, {"output_dir": str(out), "routing": {"rule": "prm_threshold"}})
    cfg.rule_dir("prm_threshold").mkdir(parents=True)
    # κ 1.01 keeps every draft (the PRM's doubt is at most 1); κ 0 escalates every draft.
    points = [_point(0.3, 1.01), _point(0.9, 0.0)]
    save_operating_points(
        [replace(p, rule="prm_threshold") for p in points], cfg.rule_dir("prm_threshold")
    )
    overrides = {
        "output_dir": str(out),
        "routing": {"rule": "prm_threshold"},
        "serve": {"request_timeout_s": 20},
    }
    serve.run(
        build_app({"config": str(CONFIG), "overrides": overrides}), name="prm", route_prefix="/prm"
    )
    yield f"{server}/prm"
    serve.delete("prm")


def test_the_prm_router_serves_its_calibrated_points_and_charges_the_scoring(
    prm_server, problems, testbed_cfg
):
    client = _client(prm_server)
    models = {m.id: m.model_dump()["routing"] for m in client.models.list()}
    assert models["router-b0.30"]["rule"] == models["router-b0.90"]["rule"] == "prm_threshold"
    small = client.chat.completions.create(
        model="small", messages=[{"role": "user", "content": problems[0].question}]
    )
    prm = testbed_cfg.prm.name
    for model, rate in (("router-b0.30", 0.0), ("router-b0.90", 1.0)):
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": problems[0].question}]
        )
        routing = reply.model_dump()["routing"]
        assert routing["rule"] == "prm_threshold" and routing["escalation_rate"] == rate
        assert routing["totals"][prm]["cost"] > 0  # every draft was scored, and paid for
        assert sum(t["cost"] for t in routing["totals"].values()) == pytest.approx(routing["cost"])
        if rate == 0.0:
            assert reply.choices[0].message.content == small.choices[0].message.content


def test_serving_a_baseline_needs_its_calibrated_points(tmp_path):
    from serve_app.app import build_app

    overrides = {"output_dir": str(tmp_path), "routing": {"rule": "prm_threshold"}}
    with pytest.raises(ConfigError, match="steproute calibrate --rule prm_threshold"):
        build_app({"config": str(CONFIG), "overrides": overrides})


def test_the_routing_totals_come_back_as_response_headers(server, problems):
    reply = httpx.post(
        f"{server}/v1/chat/completions",
        json={
            "model": "router-b0.70",
            "messages": [{"role": "user", "content": problems[2].question}],
        },
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    routing, headers = reply.json()["routing"], reply.headers
    assert float(headers["x-steproute-cost"]) == routing["cost"] > 0
    assert float(headers["x-steproute-cost-normalized"]) == pytest.approx(
        routing["cost"] / LARGE_ONLY_COST
    )
    escalated = sum(s["escalated"] for s in routing["steps"])
    assert int(headers["x-steproute-escalations"]) == routing["escalations"] == escalated
    assert float(headers["x-steproute-routing-ms"]) == pytest.approx(
        routing["routing_ms"], abs=1e-3
    )
    assert routing["routing_ms"] > 0


def test_a_mid_stream_disconnect_stops_the_work_and_restores_the_in_flight_count(server, problems):
    from ray import serve

    engines = [
        serve.get_deployment_handle(f"engine-{name}", app_name="steproute")
        for name in ("small", "large")
    ]
    before = httpx.get(f"{server}/health", timeout=30).json()["in_flight"]
    for problem in problems[:4]:
        body = {
            "model": "router-b0.70",  # escalates every step: both engines work
            "stream": True,
            "messages": [{"role": "user", "content": problem.question}],
        }
        with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60) as reply:
            for line in reply.iter_lines():
                if line.startswith("data: ") and '"routing_step"' in line:
                    break  # the first step arrived: hang up with the rest still to solve
        disconnected = time.monotonic()
        while True:
            busy = [h.unfinished_requests.remote().result(timeout_s=10) for h in engines]
            in_flight = httpx.get(f"{server}/health", timeout=30).json()["in_flight"]
            if busy == [0, 0] and in_flight == before:
                break
            assert time.monotonic() - disconnected < 1.0, (busy, in_flight)
            time.sleep(0.05)
