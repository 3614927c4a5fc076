"""EngineActor: shared by name, resources from config, and back after its engine is killed."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import ray

from pipeline.controller import Controller
from pipeline.data import load_split
from pipeline.engines.actor import ACTOR_PREFIX, actor_name, actor_options
from pipeline.rules import make_rule


def test_actor_options_follow_the_model_config(testbed_cfg) -> None:
    model = testbed_cfg.models[0]
    options = actor_options(model)
    assert options["name"] == actor_name(model) and options["name"].startswith(ACTOR_PREFIX)
    # A model of the same name behind an endpoint is another engine: another actor.
    remote = model.model_copy(update={"engine": "openai", "api_base": "http://127.0.0.1:1/v1"})
    assert actor_name(remote) != actor_name(model)
    assert options["num_cpus"] == model.resources.num_cpus and options["num_gpus"] == 0
    assert options["max_restarts"] >= 1 and options["max_task_retries"] >= 1
    gpu = model.model_copy(update={"resources": model.resources.model_copy(update={"num_gpus": 1})})
    assert actor_options(gpu)["num_gpus"] == 1


def test_callers_share_one_named_actor(testbed_engines, testbed_cfg) -> None:
    from pipeline.engines.actor import engine_actor

    again = engine_actor(testbed_cfg.models[0])  # get_if_exists: the same actor, no new engine
    first = ray.get(testbed_engines["small"].actor.describe.remote())
    second = ray.get(again.describe.remote())
    assert first["pid"] == second["pid"]


def test_each_engine_runs_on_its_configured_cores(testbed_engines, testbed_cfg) -> None:
    """The testbed pins each engine's process to its own core (`resources.cpu_cores`)."""
    for model in testbed_cfg.models:
        assert model.resources.cpu_cores, "the testbed config pins its engines"
        info = ray.get(testbed_engines[model.name].actor.describe.remote())
        assert info["cpu_cores"] == sorted(model.resources.cpu_cores)
        for pid in info["engine_pids"]:  # vLLM's engine core process too, when it has one
            assert os.sched_getaffinity(pid) == set(model.resources.cpu_cores)


def test_killed_engine_comes_back_and_the_run_loses_no_problem(
    testbed_engines, testbed_cfg
) -> None:
    small = testbed_engines["small"]
    before = ray.get(small.actor.describe.remote())
    problems = load_split(testbed_cfg.dataset, "test")[:12]
    controller = Controller(testbed_cfg, testbed_engines)
    killed = []

    def kill_once(done: int, total: int) -> None:
        if not killed:  # after the first round: problems are in flight
            for pid in before["engine_pids"]:
                os.kill(pid, signal.SIGKILL)
            killed.append(time.time())

    states = asyncio.run(
        controller.run(problems, make_rule("small_only"), concurrency=4, progress=kill_once)
    )
    after = ray.get(small.actor.describe.remote())
    assert killed and after["pid"] != before["pid"]  # Ray restarted the actor
    assert [s.problem.id for s in states] == [p.id for p in problems]
    assert all(s.done and s.steps for s in states)
