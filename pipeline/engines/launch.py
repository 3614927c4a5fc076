"""Start the engines of a model ladder: as shared Ray actors (default) or in this process.

Either way the caller gets `StepEngine`s, optionally fronted by a `StepCache`; the controller
cannot tell them apart.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from pipeline.config import ModelConfig
from pipeline.engines.cache import CachedEngine, StepCache
from pipeline.engines.local import local_engine
from pipeline.engines.types import StepEngine

log = logging.getLogger(__name__)

__all__ = ["engine_pool", "shutdown_engines", "start_engines"]


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


async def shutdown_engines(engines: dict[str, StepEngine]) -> None:
    """Release what these engines own (`StepEngine.close`): in-process engines stop; shared
    Ray actors stay for their next user."""
    for engine in engines.values():
        await engine.close()


@asynccontextmanager
async def engine_pool(
    models: Sequence[ModelConfig],
    *,
    use_ray: bool = True,
    cache: StepCache | None = None,
    engines: dict[str, StepEngine] | None = None,
) -> AsyncIterator[dict[str, StepEngine]]:
    """The engines of `models` for the duration of an `async with` block.

    `engines`: running ones to use (the caller keeps them: they stay running); otherwise they
    are started here (`start_engines`) and released on exit. With `cache`, every engine is
    fronted by it and the cache is flushed on exit, even when the block fails."""
    own = engines is None
    live = start_engines(models, use_ray=use_ray) if own else dict(engines)
    if cache is not None:
        live = {name: CachedEngine(engine, cache) for name, engine in live.items()}
    try:
        yield live
    finally:
        if cache is not None:
            cache.flush()
        if own:
            await shutdown_engines(live)
