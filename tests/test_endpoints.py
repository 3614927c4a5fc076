"""The whole pipeline with both models behind OpenAI-compatible endpoints: two real `vllm serve`
processes of the testbed pair on loopback (small over the completions API, large over the chat
API with the shipped chat template), `steproute pipeline` through every stage, then a routed
request through `steproute serve`. The processes are started and stopped here.

That chat-protocol steps are the in-Ray engine's token for token, and cost what the server
billed, is shown step by step in tests/engines/test_openai_chat.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from pipeline.engines.cache import StepCache
from serve_app.request_path import free_port

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "testbed_endpoints.yaml"
TEMPLATE = REPO / "configs" / "testbed_chat_template.jinja"
TINY = [  # every stage, on a dozen problems per split
    "dataset.limit=12",
    "training.warm_start_problems=12",
    "training.warm_start_epochs=2",
    "training.iterations=1",
    "training.train_batch_size=64",
    "training.minibatch_size=32",
    "training.num_epochs=1",
    "training.concurrency=12",
    "calibration.method=quantile",
    "calibration.budgets=[0.5,0.9]",
    "calibration.grid_targets=[0.2,0.5,0.8]",
    "evaluation.escalation_targets=[0.5]",
    "evaluation.concurrency=12",
]


@pytest.fixture(scope="module")
def endpoints(testbed_cfg, vllm_serve, openai_proxy):
    """The two servers; the small one behind a proxy that can strip logprobs."""
    small, large = testbed_cfg.models
    with (
        vllm_serve(small, log_name="vllm-serve-small") as small_url,
        vllm_serve(
            large, "--chat-template", str(TEMPLATE), log_name="vllm-serve-large"
        ) as large_url,
        openai_proxy(small_url) as (proxy_url, proxy),
    ):
        yield {"STEPROUTE_SMALL_URL": proxy_url, "STEPROUTE_LARGE_URL": large_url}, proxy


def _steproute(env: dict, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=REPO,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _pipeline(env: dict) -> subprocess.CompletedProcess:
    sets = [arg for pair in TINY for arg in ("--set", pair)]
    done = _steproute(env, "pipeline", "--config", str(CONFIG), *sets)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_the_pipeline_runs_on_endpoints_and_serve_fronts_them(endpoints, tmp_path) -> None:
    urls, _ = endpoints
    env = urls | {"STEPROUTE_OUTPUT": str(tmp_path)}
    _pipeline(env)
    summary = pd.read_csv(tmp_path / "evaluation" / "summary.csv")
    assert {"small_only", "large_only", "confidence_threshold", "policy"} <= set(summary.rule)
    assert (tmp_path / "policy" / "operating_points.json").exists()
    # Every step the endpoints wrote carries what the server billed, and costs were paid from it.
    cache = StepCache(tmp_path / "step_cache")
    entries = list(cache._entries.values())
    assert entries and all(e.billed_tokens is not None for e in entries if e.token_ids)
    results = pd.read_parquet(tmp_path / "evaluation" / "results.parquet")
    assert (results[results.rule == "large_only"].cost > 0).all()

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "serve",
            "--config",
            str(CONFIG),
            "--port",
            str(port),
        ],
        cwd=REPO,
        env=os.environ | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}/v1"
        deadline = time.time() + 240
        while True:
            assert server.poll() is None, server.stdout.read()[-3000:]
            try:
                if httpx.get(f"{base}/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "steproute serve never answered"
            time.sleep(2)
        question = "Sam has 3 coins: +4 *2."
        reply = httpx.post(
            f"{base}/chat/completions",
            json={"model": "router", "messages": [{"role": "user", "content": question}]},
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        routing = reply.json()["routing"]
        assert routing["steps"] and routing["cost"] > 0
        assert set(routing["totals"]) <= {"small", "large"}
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def test_a_server_without_logprobs_still_completes_the_pipeline(endpoints, tmp_path) -> None:
    urls, proxy = endpoints
    proxy.strip_logprobs = True
    try:
        done = _pipeline(urls | {"STEPROUTE_OUTPUT": str(tmp_path)})
    finally:
        proxy.strip_logprobs = False
    output = done.stdout + done.stderr
    assert output.count("server returned no logprobs") == 1, output[-3000:]
    report = (tmp_path / "evaluation" / "report.md").read_text()
    assert "Neutral features" in report and "draft/mean_prob" in report
