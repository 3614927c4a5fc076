"""`pin_process`: every thread of an engine's process, and those it starts later, on the
configured cores. Run in a child process: pinning the test process would pin the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CHILD = """
import json, os, sys, threading, time
from pipeline.engines.hosting import pin_process

stop = threading.Event()
before = threading.Thread(target=stop.wait)  # a thread that exists before pinning
before.start()
try:
    pin_process(tuple(json.loads(sys.argv[1])), "model 'small'")
except Exception as exc:
    stop.set()
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
    sys.exit(0)
after = threading.Thread(target=stop.wait)  # one started afterwards inherits the cores
after.start()
time.sleep(0.1)
threads = {tid: sorted(os.sched_getaffinity(int(tid))) for tid in os.listdir("/proc/self/task")}
child = os.fork()  # a process it starts (vLLM's engine core) inherits them too
if child == 0:
    print(json.dumps({"forked": sorted(os.sched_getaffinity(0))}), flush=True)
    os._exit(0)
os.waitpid(child, 0)
stop.set()
print(json.dumps({"threads": threads}))
"""


def _pin_in_child(cores: list[int]) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cores)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux CPU affinity")
def test_every_thread_and_child_process_runs_on_the_cores() -> None:
    core = max(os.sched_getaffinity(0))  # the last core this process may use
    reports = _pin_in_child([core])
    threads = next(r["threads"] for r in reports if "threads" in r)
    assert len(threads) >= 3  # the main thread, one started before and one after
    assert all(cores == [core] for cores in threads.values())
    assert next(r["forked"] for r in reports if "forked" in r) == [core]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux CPU affinity")
def test_cores_the_node_lacks_are_named() -> None:
    missing = max(os.sched_getaffinity(0)) + 1
    (report,) = _pin_in_child([missing])
    assert report["error"].startswith("ConfigError: model 'small': resources.cpu_cores")
    assert f"[{missing}]" in report["error"]
