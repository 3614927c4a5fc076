"""Ray Serve's request-path settings for the router app's replicas.

Serve's "throughput-optimized" mode (`RAY_SERVE_THROUGHPUT_OPTIMIZED`) without its direct
ingress, which would keep a stopping replica draining for at least 30 s: user code and the
handles' router on the replica's own event loop, gRPC between deployments (the router calls an
engine once per step), access logs buffered, GC frozen after start-up. Measured by
benchmarks/serving.py (RESULTS.md).

`build_app` puts them in each replica's `runtime_env`, so they hold on any cluster. Any of them
set in the environment wins. A process that calls the deployments through handles (the serving
benchmark) calls `use_grpc_handles` before it imports `ray.serve`, which reads its settings
once: it takes only the same transport (gRPC) and keeps the handles' router on its own loop,
since such a process may drive handles from more than one event loop (the rollout env runs its
own).
"""

from __future__ import annotations

import os

__all__ = ["REQUEST_PATH_ENV", "request_path_env", "use_grpc_handles"]

REQUEST_PATH_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_FREEZE_GC_ON_STARTUP": "1",
    "RAY_SERVE_LOG_TO_STDERR": "0",
}


def request_path_env() -> dict[str, str]:
    """`REQUEST_PATH_ENV`, each value overridden by the environment's."""
    return {name: os.environ.get(name, value) for name, value in REQUEST_PATH_ENV.items()}


def use_grpc_handles() -> None:
    """The handles of this process call deployments over gRPC, as the router's do (kept where
    already set)."""
    os.environ.setdefault(
        "RAY_SERVE_USE_GRPC_BY_DEFAULT", REQUEST_PATH_ENV["RAY_SERVE_USE_GRPC_BY_DEFAULT"]
    )
