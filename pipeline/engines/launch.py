"""Start the engines of a model ladder: as shared Ray actors (default) or in this process.

Either way the caller gets `StepEngine`s, optionally fronted by a `StepCache`; the controller
cannot tell them apart.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pipeline.config import ModelConfig
from pipeline.engines.cache import CachedEngine, StepCache
from pipeline.engines.local import local_engine
from pipeline.engines.types import StepEngine

log = logging.getLogger(__name__)

__all__ = ["shutdown_engines", "start_engines"]


def start_engines(
    models: Sequence[ModelConfig], *, use_ray: bool = True, cache: StepCache | None = None
) -> dict[str, StepEngine]:
    """One engine per model. With Ray, each is the shared named `EngineActor` for that model
    (started if no one started it yet) on the Ray instance this process is connected to, or a
    new local one."""
    engines: dict[str, StepEngine] = {}
    if use_ray:
        import ray

        from pipeline.engines.actor import ActorEngine, engine_actor

        if not ray.is_initialized():
            ray.init()  # RAY_ADDRESS, when set, joins that cluster
        actors = {m.name: engine_actor(m) for m in models}  # all start in parallel
        engines = {m.name: ActorEngine(actors[m.name], m) for m in models}
    else:
        engines = {m.name: local_engine(m) for m in models}
    if cache is not None:
        engines = {name: CachedEngine(engine, cache) for name, engine in engines.items()}
    return engines


async def shutdown_engines(engines: dict[str, StepEngine], *, kill_actors: bool = False) -> None:
    """Stop in-process engines (actors are shared and stay, unless `kill_actors`)."""
    for engine in engines.values():
        inner = getattr(engine, "engine", engine)  # unwrap a CachedEngine
        if hasattr(inner, "shutdown"):
            inner.shutdown()
        elif hasattr(inner, "aclose"):
            await inner.aclose()
        elif kill_actors and hasattr(inner, "actor"):
            import ray

            ray.kill(inner.actor, no_restart=True)
