"""`EngineHost`: one model's engine inside a long-lived process that many callers share.

The Ray actor (`pipeline.engines.actor.EngineActor`) and the Serve deployment
(`serve_app.engines.EngineServer`) are both an `EngineHost`: the same engine construction, the
same way out when the engine process dies (exit, so Ray or Serve replaces the process), the same
prefix-cache reset, description and health.
"""

from __future__ import annotations

import logging
import os

from pipeline.config import ConfigError, ModelConfig
from pipeline.engines.local import local_engine
from pipeline.engines.types import StepEngine, StepRequest, StepResult

log = logging.getLogger(__name__)

__all__ = ["EngineHost", "engine_dead", "pin_process"]


def engine_dead(exc: BaseException) -> bool:
    """Is `exc` vLLM saying its engine process is gone (it cannot be revived in place)?"""
    try:
        from vllm.v1.engine.exceptions import EngineDeadError
    except ImportError:  # an OpenAI engine only: no local engine process to die
        return False
    return isinstance(exc, EngineDeadError)


def pin_process(cores: tuple[int, ...], owner: str) -> None:
    """Run every thread of this process on `cores` (Linux CPU affinity). Threads and processes
    it starts later inherit the set from the thread that starts them."""
    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError(f"{owner}: resources.cpu_cores needs Linux CPU affinity")
    allowed = os.sched_getaffinity(0)
    if not set(cores) <= allowed:
        raise ConfigError(
            f"{owner}: resources.cpu_cores {list(cores)} are not all among the cores this "
            f"process may use on this node, {sorted(allowed)}"
        )
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except ProcessLookupError:  # the thread has ended
            pass
    log.info("%s: every thread of process %d runs on cores %s", owner, os.getpid(), list(cores))


class EngineHost:
    """Hosts one engine; every method is async so callers' calls overlap inside the host."""

    replaced_by = "its supervisor"  # who starts a new process when this one exits (for the log)
    model: ModelConfig
    engine: StepEngine  # built here by `local_engine`

    def __init__(self, model: ModelConfig) -> None:
        self.model = model
        if model.resources.cpu_cores:  # before the engine starts its threads and processes
            pin_process(model.resources.cpu_cores, f"model '{model.name}'")
        self.engine = local_engine(model)

    async def generate_batch(self, requests: list[StepRequest]) -> list[StepResult]:
        try:
            return await self.engine.generate_batch(requests)
        except Exception as exc:
            if engine_dead(exc):
                log.error(
                    "engine %s died (%s); exiting so %s replaces this process",
                    self.model.name,
                    exc,
                    self.replaced_by,
                )
                os._exit(1)
            raise

    async def reset_prefix_cache(self) -> None:
        """Empty the engine's prefix cache (benchmarks start each measured arm cold)."""
        await self.engine.reset_prefix_cache()

    async def describe(self) -> dict:
        import psutil
        import ray

        return {
            "name": self.model.name,
            "fingerprint": self.engine.fingerprint,
            "max_model_len": self.engine.max_model_len,
            "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
            "pid": os.getpid(),
            "cpu_cores": sorted(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else None,
            # The processes whose death ends the engine: vLLM's engine core process, or this
            # one when the core runs in process (`ModelConfig.engine_core`).
            "engine_pids": [
                p.pid
                for p in psutil.Process().children(recursive=True)
                if "EngineCore" in " ".join(p.cmdline())
            ]
            or [os.getpid()],
        }

    async def unfinished_requests(self) -> int:
        """Requests the engine is still working on: 0 once every caller's call has ended."""
        return self.engine.unfinished_requests()

    def healthy(self) -> bool:
        """False once the engine has errored (a dead vLLM engine core)."""
        inner = getattr(self.engine, "_engine", None)
        return not (inner is not None and getattr(inner, "errored", False))
