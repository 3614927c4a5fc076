"""`EngineActor`: one step engine hosted as a named, async Ray actor that many callers share.

Env runners, the evaluation harness and the Serve router look the actor up by name
(`engine_actor(model)`) instead of starting engines of their own; vLLM batches their requests.
A crashed engine is restarted by Ray (`max_restarts`), and callers' calls are retried.
"""

from __future__ import annotations

import ray

from pipeline.config import ModelConfig
from pipeline.engines.types import StepRequest, StepResult

ACTOR_PREFIX = "steproute-engine-"
MAX_RESTARTS = 3


class EngineActor:
    """Hosts one engine; every method is async so calls overlap inside the actor."""

    def __init__(self, model: ModelConfig) -> None:
        if model.engine == "openai":
            from pipeline.engines.openai_engine import OpenAIEngine

            self.engine = OpenAIEngine(model)
        else:
            from pipeline.engines.vllm_engine import VLLMEngine

            self.engine = VLLMEngine(model)
        self.model = model

    async def generate_batch(self, requests: list[StepRequest]) -> list[StepResult]:
        return await self.engine.generate_batch(requests)

    async def describe(self) -> dict:
        return {
            "name": self.model.name,
            "fingerprint": self.engine.fingerprint,
            "max_model_len": self.engine.max_model_len,
            "node_id": ray.get_runtime_context().get_node_id(),
        }


def actor_options(model: ModelConfig) -> dict:
    """Ray resources for the actor hosting `model`, from its config."""
    resources = model.resources
    options = {
        "name": ACTOR_PREFIX + model.name,
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
    return options


def engine_actor(model: ModelConfig):
    """The named actor for `model`, started if no caller started it yet."""
    return ray.remote(EngineActor).options(**actor_options(model)).remote(model)
