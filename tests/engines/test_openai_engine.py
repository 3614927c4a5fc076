"""OpenAIEngine against a real `vllm serve` of the testbed small model on loopback."""

from __future__ import annotations

import asyncio
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.engines.openai_engine import OpenAIEngine, OpenAIEngineError
from pipeline.engines.types import StepRequest
from pipeline.prompts import prompt_token_ids

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(testbed_cfg):
    model = testbed_cfg.models[0]
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(REPO / model.path),
        "--served-model-name",
        model.path,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        model.dtype,
        "--max-model-len",
        str(model.max_model_len),
        "--block-size",
        str(model.block_size),
        "--kv-cache-memory-bytes",
        str(model.kv_cache_memory_bytes),
        "--enable-prefix-caching",
    ]
    env = os.environ | {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    log = open(REPO / ".pytest-vllm-serve.log", "w")  # noqa: SIM115
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while time.time() < deadline:
        if server.poll() is not None:
            pytest.fail(f"vllm serve exited with {server.returncode}; see .pytest-vllm-serve.log")
        try:
            urllib.request.urlopen(base + "/health", timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        server.kill()
        pytest.fail("vllm serve did not come up within 240 s")
    yield base + "/v1", model
    server.terminate()
    server.wait(30)
    log.close()


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


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers the first `failures` requests with 503 (Retry-After: 0), then proxies."""

    failures = 0
    upstream = ""

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).failures > 0:
            type(self).failures -= 1
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.end_headers()
            return
        request = urllib.request.Request(
            self.upstream + self.path.removeprefix("/v1"),
            data=body,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_proxy(vllm_server):
    base, model = vllm_server
    _Flaky.upstream = base
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", model
    server.shutdown()


def test_transient_503s_are_retried_until_the_step_arrives(flaky_proxy, testbed_cfg) -> None:
    base, model = flaky_proxy
    _Flaky.failures = 2
    engine = _engine(model, base, backoff_s=0.01)
    result = asyncio.run(engine.generate(StepRequest(_prompts(testbed_cfg, 1)[0], max_tokens=48)))
    assert engine.retries == 2 and len(result.token_ids) > 0


def test_persistent_failures_give_up_with_a_clear_error(flaky_proxy, testbed_cfg) -> None:
    base, model = flaky_proxy
    _Flaky.failures = 100
    engine = _engine(model, base, backoff_s=0.01, max_retries=2)
    with pytest.raises(OpenAIEngineError, match="giving up after 3 attempts"):
        asyncio.run(engine.generate(StepRequest(_prompts(testbed_cfg, 1)[0], max_tokens=48)))
    _Flaky.failures = 0


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
