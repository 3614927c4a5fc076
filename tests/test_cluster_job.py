"""A real two-node Ray cluster on this machine: `ray start --head` plus a worker node, token
auth as Ray 2.60 has it by default, a short testbed pipeline submitted with `ray job submit`,
and the engines and the env runner found on the nodes whose custom resources the config named.
Only the processes this test started are stopped."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from pipeline.config import load_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def _run(command: list[str], env: dict, cwd: Path) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, (
        f"{command[:3]} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    )


def _node_ports(ports: list[int]) -> list[str]:
    listen, grpc, metrics, runtime_env = ports
    return [
        f"--dashboard-agent-listen-port={listen}",
        f"--dashboard-agent-grpc-port={grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
    ]


@pytest.fixture
def cluster(tmp_path):
    """Head (CPU + small_llm) and a worker node (large_llm + env_runner), in their own temp dir."""
    # Ray's socket paths must stay under 108 bytes: a short folder, not pytest's tmp_path.
    temp = Path(tempfile.mkdtemp(prefix="sr-ray-"))
    gcs, dashboard, client, *node_ports = _free_ports(11)
    env = os.environ | {"RAY_AUTH_MODE": "token", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    env.pop("RAY_ADDRESS", None)
    common = ["--disable-usage-stats", "--num-cpus=3"]
    _run(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            f"--port={gcs}",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={client}",
            "--include-dashboard=true",
            f"--temp-dir={temp}",
            '--resources={"small_llm": 1}',
            *common,
            *_node_ports(node_ports[:4]),
        ],
        env,
        tmp_path,
    )
    try:
        _run(
            [
                str(BIN / "ray"),
                "start",
                f"--address=127.0.0.1:{gcs}",
                '--resources={"large_llm": 1, "env_runner": 1}',
                *common,
                *_node_ports(node_ports[4:8]),
            ],
            env,
            tmp_path,
        )
        yield {"gcs": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dashboard}", "env": env}
    finally:  # stop what this test started, nothing else
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(str(temp) in part for part in proc.info["cmdline"] or []):
                    proc.kill()
            except psutil.Error:
                pass
        shutil.rmtree(temp, ignore_errors=True)


def _job_config(tmp_path: Path) -> Path:
    cfg = load_config(REPO / "configs" / "testbed.yaml").model_dump(mode="json")
    for model, resource in zip(cfg["models"], ("small_llm", "large_llm"), strict=True):
        model["path"] = str(REPO / model["path"])
        model["resources"]["custom_resources"] = {resource: 1}
    cfg["output_dir"] = str(tmp_path / "out")
    cfg["training"] |= {
        "iterations": 1,
        "train_batch_size": 96,
        "minibatch_size": 48,
        "num_epochs": 1,
        "concurrency": 8,
        "num_env_runners": 1,
        "env_runner_resources": {"env_runner": 1},
        "warm_start_problems": 8,
    }
    cfg["calibration"] |= {"limit": 8, "method": "quantile", "grid_targets": [0.3, 0.7]}
    cfg["evaluation"] |= {
        "limit": 8,
        "escalation_targets": [0.5],
        "rules": ["small_only", "large_only", "confidence_threshold", "policy"],
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


PLACEMENT = """
import json, ray
from ray.util.state import list_actors
ray.init()
nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
out = {}
engines = [a for a in ray.util.list_named_actors(all_namespaces=True)
           if a["namespace"] == "steproute" and a["name"].startswith("steproute-engine-")]
for model in ("small", "large"):
    (name,) = [a["name"] for a in engines if a["name"].startswith("steproute-engine-" + model + "-")]
    info = ray.get(ray.get_actor(name, namespace="steproute").describe.remote())
    out[model] = nodes[info["node_id"]]
runners = list_actors(filters=[("class_name", "=", "MultiAgentEnvRunner")], detail=True)
out["env_runners"] = [nodes.get(a.node_id, {}) for a in runners]
print("PLACEMENT " + json.dumps(out))
"""


def test_pipeline_job_runs_on_a_two_node_cluster(cluster, tmp_path) -> None:
    config = _job_config(tmp_path)
    env = cluster["env"]
    submit = [str(BIN / "ray"), "job", "submit", "--address", cluster["dashboard"], "--"]
    deadline = time.time() + 60
    while True:  # the job agent comes up a few seconds after `ray start`
        done = subprocess.run(
            [*submit, str(BIN / "steproute"), "pipeline", "--config", str(config)],
            env=env,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=900,
        )
        if "No available agent" not in done.stdout + done.stderr or time.time() > deadline:
            break
        time.sleep(3)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-5000:]
    assert "succeeded" in log, log[-3000:]
    out = tmp_path / "out"
    for stage in ("baselines", "train", "calibrate", "evaluate"):
        assert (out / "stages" / f"{stage}.json").exists(), stage
    assert (out / "evaluation" / "report.md").exists()

    probe = subprocess.run(
        [str(BIN / "python"), "-c", PLACEMENT],
        env=env | {"RAY_ADDRESS": cluster["gcs"]},
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = [x for x in probe.stdout.splitlines() if x.startswith("PLACEMENT ")]
    assert line, probe.stdout[-2000:] + probe.stderr[-3000:]
    placement = json.loads(line[0].removeprefix("PLACEMENT "))
    assert placement["small"].get("small_llm") == 1
    assert placement["large"].get("large_llm") == 1
    assert placement["env_runners"], "no env runner actor was recorded"
    assert all(r.get("env_runner") == 1 for r in placement["env_runners"])

    # Again: every stage is up to date and kept.
    again = subprocess.run(
        [*submit, str(BIN / "steproute"), "pipeline", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert (again.stdout + again.stderr).count("up to date (config hash") == 4  # every stage kept
