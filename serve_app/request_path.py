"""Ray Serve's request-path settings for the router app's replicas.

Serve's "throughput-optimized" mode (`RAY_SERVE_THROUGHPUT_OPTIMIZED`) without its direct
ingress, which would keep a stopping replica draining for at least 30 s: user code and the
handles' router on the replica's own event loop, gRPC between deployments (the router calls an
engine once per step), access logs buffered, GC frozen after start-up. Measured by
benchmarks/serving.py (RESULTS.md).

Direct ingress (`serve.ingress: direct`) is the rest of that mode: the router replica answers
HTTP on `serve.port` itself, so a request skips the proxy's hop and the replica's calls back to
the proxy for the request's messages. Serve's controller reads it when it starts, so it holds
for a Ray that `steproute serve` (or a benchmark) starts itself: `use_direct_ingress` sets it
in the environment before Ray starts. Serve still runs a proxy on the head node; it gets
another port.

`build_app` puts them in each replica's `runtime_env`, so they hold on any cluster. Any of them
set in the environment wins. A process that calls the deployments through handles (the serving
benchmark) calls `use_grpc_handles` before it imports `ray.serve`, which reads its settings
once: it takes only the same transport (gRPC) and keeps the handles' router on its own loop,
since such a process may drive handles from more than one event loop (the rollout env runs its
own).
"""

from __future__ import annotations

import os
import socket

__all__ = [
    "REQUEST_PATH_ENV",
    "direct_ingress_env",
    "free_port",
    "port_is_free",
    "request_path_env",
    "use_direct_ingress",
    "use_grpc_handles",
]

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


def direct_ingress_env(port: int) -> dict[str, str]:
    """Serve's direct-ingress settings for one router replica that answers on `port`: the
    replica's port range is that one port, a stopping replica does not wait the default 30 s
    for a load balancer to notice (the router drains itself first), and a restarted replica
    may take the port back at once."""
    return {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
        "RAY_SERVE_PORT_QUARANTINE_S": "0",
    }


def use_direct_ingress(port: int, host: str = "127.0.0.1") -> int:
    """Direct ingress on `port` for the Ray this process is about to start: call it before
    `ray.init` and before anything imports `ray.serve`. Returns a free port for Serve's
    head-node proxy (`serve.start`'s `http_options`), which must not take `port`."""
    import sys

    if "ray.serve" in sys.modules:
        raise RuntimeError("use_direct_ingress must run before ray.serve is imported")
    os.environ.update(direct_ingress_env(port))
    return free_port(host)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    """Whether `port` on `host` can be bound now (the direct-ingress replica binds it later)."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
