"""`steproute serve` stops gracefully: SIGTERM drains the requests in flight, refuses new ones,
shuts Serve, the engines and its own Ray down, and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import yaml

from serve_app.request_path import free_port

REPO = Path(__file__).resolve().parents[2]
DRAIN_TIMEOUT_S = 20.0
SHUTDOWN_ALLOWANCE_S = 30.0  # Serve and Ray shutting down after the drain


def _config(tmp_path: Path) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "testbed.yaml").read_text())
    # The testbed's serve section (direct ingress) with a short drain.
    cfg["serve"] = cfg.get("serve", {}) | {
        "drain_timeout_s": DRAIN_TIMEOUT_S,
        "request_timeout_s": 60,
    }
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _ask(base: str, question: str, answers: list) -> None:
    try:
        reply = httpx.post(
            f"{base}/v1/chat/completions",
            json={"model": "router", "messages": [{"role": "user", "content": question}]},
            timeout=120,
        )
        answers.append(reply.status_code)
    except httpx.HTTPError as exc:
        answers.append(exc)


def test_sigterm_drains_requests_in_flight_and_leaves_no_process(tmp_path, testbed_cfg) -> None:
    from pipeline.data import load_split

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "pipeline.cli", "serve", "--config", str(_config(tmp_path))]
    command += ["--port", str(port), "--policy", "hand_set"]
    # RAY_ADDRESS=local: its own Ray, so every process it started is its descendant.
    env = os.environ | {"RAY_ADDRESS": "local"}
    server = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while True:
            assert server.poll() is None, server.stdout.read()[-3000:]
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "steproute serve never became healthy"
            time.sleep(1)
        started = psutil.Process(server.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in started)
        # Direct ingress: the Router replica itself listens on the port, not Serve's proxy.
        listeners = [c.pid for c in psutil.net_connections("tcp") if c.laddr.port == port and c.pid]
        assert listeners, f"nothing listens on {port}"
        assert all("Router" in " ".join(psutil.Process(pid).cmdline()) for pid in listeners), [
            " ".join(psutil.Process(pid).cmdline())[:80] for pid in listeners
        ]

        answers: list = []
        questions = [p.question for p in load_split(testbed_cfg.dataset, "test")[:24]]
        threads = [threading.Thread(target=_ask, args=(base, q, answers)) for q in questions]
        for thread in threads:
            thread.start()
        # Signal once every request has reached the router (or been answered already).
        while httpx.get(f"{base}/health", timeout=10).json()["in_flight"] + len(answers) < len(
            questions
        ):
            time.sleep(0.05)
        server.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        # A request sent after the signal is refused: 503, or no connection at all.
        time.sleep(0.5)
        try:
            late = httpx.post(
                f"{base}/v1/chat/completions",
                json={"model": "router", "messages": [{"role": "user", "content": questions[0]}]},
                timeout=30,
            ).status_code
        except httpx.HTTPError:
            late = "refused"
        assert late in (503, "refused")

        for thread in threads:
            thread.join(120)
        assert answers == [200] * len(questions), answers
        code = server.wait(DRAIN_TIMEOUT_S + SHUTDOWN_ALLOWANCE_S)
        assert code == 0, server.stdout.read()[-3000:]
        assert time.monotonic() - signalled < DRAIN_TIMEOUT_S + SHUTDOWN_ALLOWANCE_S
    finally:
        if server.poll() is None:
            server.kill()
    # Nothing it started outlives it: Ray's processes and the engine replicas (vLLM) are gone.
    deadline = time.time() + 30
    while (alive := [p for p in started if p.is_running() and p.status() != "zombie"]) and (
        time.time() < deadline
    ):
        time.sleep(1)
    assert not alive, [" ".join(p.cmdline())[:120] for p in alive]
