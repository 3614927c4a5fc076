"""Shared fixtures. The benchmark files live outside the repository (see README: Data)."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from serve_app.request_path import free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The benchmark data folder: $STEPROUTE_DATA_DIR, else ../shared/data beside the repo."""
    path = Path(os.environ.get("STEPROUTE_DATA_DIR", REPO.parent / "shared" / "data"))
    if not (path / "gsm8k" / "test.jsonl").is_file():
        pytest.fail(f"benchmark data not found under {path}; set STEPROUTE_DATA_DIR")
    return path


@pytest.fixture(autouse=True)
def _data_env(data_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> None:
    # The shipped configs read ${STEPROUTE_DATA_DIR:...}; point them at the same folder.
    monkeypatch.setenv("STEPROUTE_DATA_DIR", str(data_dir))
    # Commands run by tests keep their log files out of the checkout.
    monkeypatch.setenv("STEPROUTE_LOG_DIR", str(tmp_path_factory.getbasetemp() / "logs"))
    # Configs name paths relative to the repository root (models, outputs).
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="session")
def testbed_cfg():
    from pipeline.config import load_config

    return load_config(REPO / "configs" / "testbed.yaml")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole session (more logical CPUs than cores: the engine
    actors mostly wait)."""
    import ray

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def testbed_engines(ray_session, testbed_cfg):
    """The testbed small and large models as shared `EngineActor`s (real vLLM on CPU)."""
    from pipeline.engines.launch import start_engines

    os.chdir(REPO)  # model paths in the config are relative to the repository
    engines = start_engines(testbed_cfg.models, use_ray=True)
    yield engines
    for engine in engines.values():
        ray_session.kill(engine.actor, no_restart=True)


# ------------------------------------------------------------------ OpenAI-compatible servers


@contextlib.contextmanager
def _vllm_serve(model, *extra: str, log_name: str = "vllm-serve"):
    """`vllm serve` of a testbed model on loopback, started and stopped here; yields its /v1 URL.
    The server answers to the model's `path` as its name (what `OpenAIEngine` sends)."""
    port = free_port()
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
        "--enable-prompt-tokens-details",  # usage reports cached prompt tokens
        *extra,
    ]
    env = os.environ | {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    log_path = REPO / f".pytest-{log_name}.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 240
            while True:
                if server.poll() is not None:
                    pytest.fail(f"vllm serve exited with {server.returncode}; see {log_path}")
                try:
                    urllib.request.urlopen(base + "/health", timeout=2)
                    break
                except OSError:
                    if time.time() > deadline:
                        pytest.fail(f"vllm serve did not come up within 240 s; see {log_path}")
                    time.sleep(1)
            yield base + "/v1"
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)


@pytest.fixture(scope="session")
def vllm_serve():
    """`with vllm_serve(model, *extra_args) as base_url:` a real `vllm serve` on loopback.
    Each server (model and arguments) starts once, on first use, and stays up for the session:
    a start takes ~40 s, and three test files use the same two servers."""
    with contextlib.ExitStack() as servers:
        started: dict[tuple, str] = {}

        @contextlib.contextmanager
        def serve(model, *extra: str, log_name: str = "vllm-serve"):
            key = (model.model_dump_json(), *extra)
            if key not in started:
                started[key] = servers.enter_context(_vllm_serve(model, *extra, log_name=log_name))
            yield started[key]

        yield serve


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible proxy in front of a real server, with faults a test switches on:
    `failures` answers that many requests with `status` (and `Retry-After: retry_after`);
    `strip_logprobs` removes logprobs from every answer. It counts requests in flight."""

    upstream = ""
    failures = 0
    status = 503
    retry_after = "0"
    strip_logprobs = False
    in_flight = 0
    most_in_flight = 0
    requests = 0
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802
        cls = type(self)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with cls.lock:
            cls.requests += 1
            cls.in_flight += 1
            cls.most_in_flight = max(cls.most_in_flight, cls.in_flight)
            fail = cls.failures > 0
            cls.failures -= fail
        try:
            if fail:
                self.send_response(cls.status)
                self.send_header("Retry-After", cls.retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status, payload = self._forward(body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def _forward(self, body: bytes) -> tuple[int, bytes]:
        request = urllib.request.Request(
            type(self).upstream + self.path.removeprefix("/v1"),
            data=body,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        if type(self).strip_logprobs and status == 200:
            answer = json.loads(payload)
            for choice in answer.get("choices", []):
                choice["logprobs"] = None
            payload = json.dumps(answer).encode()
        return status, payload

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _proxy(upstream: str, **faults):
    """A `ProxyHandler` subclass of its own in front of `upstream`; yields (its /v1 URL, the
    handler class, whose counters and faults the test reads and sets)."""
    handler = type("Proxy", (ProxyHandler,), {"upstream": upstream, "lock": threading.Lock()})
    for key, value in faults.items():
        setattr(handler, key, value)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    finally:
        server.shutdown()


@pytest.fixture(scope="session")
def openai_proxy():
    """`with openai_proxy(upstream, failures=2, status=429) as (base_url, handler):`."""
    return _proxy
