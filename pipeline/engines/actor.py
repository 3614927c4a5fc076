"""`EngineActor`: one step engine hosted as a named, async Ray actor that many callers share.

Env runners, the evaluation harness and the Serve router look the actor up by name
(`engine_actor(model)`) instead of starting engines of their own; vLLM batches their requests.
A crashed engine is restarted by Ray (`max_restarts`), and callers' calls are retried.
"""

from __future__ import annotations

import hashlib
import logging

import ray

from pipeline.config import ModelConfig, local_paths_absolute
from pipeline.engines.hosting import EngineHost
from pipeline.engines.types import StepRequest, StepResult, model_fingerprint

log = logging.getLogger(__name__)

ACTOR_PREFIX = "steproute-engine-"
NAMESPACE = "steproute"
MAX_RESTARTS = 3


class EngineActor(EngineHost):
    """Hosts one engine as a named, detached Ray actor (see `engine_actor`)."""

    replaced_by = "Ray (max_restarts), which also retries the callers' calls,"


class ActorEngine:
    """A `StepEngine` that forwards to an `EngineActor`: what callers hold instead of an engine.

    Ray retries a call that was in flight when the actor died once the actor is back
    (`max_task_retries`), so a restart looks like a slow call to the controller.
    """

    def __init__(self, actor, model: ModelConfig) -> None:
        self.actor = actor
        info = ray.get(actor.describe.remote())  # also waits until the engine is up
        self.name = info["name"]
        self.fingerprint = model_fingerprint(model.path, model.revision, model.dtype)
        self.max_model_len = info["max_model_len"]

    async def generate(self, request: StepRequest) -> StepResult:
        return (await self.generate_batch([request]))[0]

    async def generate_batch(self, requests: list[StepRequest]) -> list[StepResult]:
        return await self.actor.generate_batch.remote(requests)

    async def reset_prefix_cache(self) -> None:
        await self.actor.reset_prefix_cache.remote()

    async def close(self) -> None:
        """Nothing to release: the actor is shared and stays for its next user."""


def actor_name(model: ModelConfig) -> str:
    """The shared actor's name: the model's name and a digest of what identifies its engine, so
    that two configs that give different models the same name (an in-Ray `large` and a `large`
    behind an endpoint) never share an actor. Local folders count by their absolute path, so
    callers in other directories still find the same actor."""
    model = local_paths_absolute(model)
    identity = (
        model.engine,
        model.path,
        model.revision,
        model.dtype,
        model.max_model_len,
        model.api_base,
        model.endpoint.protocol,
    )
    return f"{ACTOR_PREFIX}{model.name}-{hashlib.sha1(repr(identity).encode()).hexdigest()[:8]}"


def actor_options(model: ModelConfig) -> dict:
    """Ray resources for the actor hosting `model`, from its config."""
    resources = model.resources
    options = {
        "name": actor_name(model),
        "namespace": NAMESPACE,  # every driver (CLI, Tune trial, Serve, job) finds the same one
        "get_if_exists": True,
        "lifetime": "detached",
        "max_restarts": MAX_RESTARTS,
        "max_task_retries": 2,
        "max_concurrency": 1024,  # many callers' steps in flight: vLLM batches them
        "num_cpus": resources.num_cpus,
        "resources": dict(resources.custom_resources),
    }
    if resources.tensor_parallel_size > 1:
        # vLLM spreads the shards over a placement group of one GPU per shard.
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group = placement_group([{"GPU": 1, "CPU": 1}] * resources.tensor_parallel_size)
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(group)
        options["num_gpus"] = 0
    else:
        options["num_gpus"] = resources.num_gpus
        # Shared by everyone: never inside the placement group of whoever started it first
        # (a Tune trial, an env runner).
        options["scheduling_strategy"] = "DEFAULT"
    return options


def engine_actor(model: ModelConfig):
    """The named actor for `model`, started if no caller started it yet.

    A model folder given relative to this process's directory is made absolute: the actor may
    run in another directory, or on another node of a cluster with the same layout.
    """
    model = local_paths_absolute(model)
    return ray.remote(EngineActor).options(**actor_options(model)).remote(model)
