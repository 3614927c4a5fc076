"""Serving overhead: the router endpoint against the same steps called on the engines directly.

For 1, 8 and 32 concurrent clients:

    router  `POST /v1/chat/completions` over HTTP (model `router`, a fixed κ), through Serve's
            proxy and the `Router` ingress;
    direct  the router's work minus HTTP: in this process, `Controller.solve` with the same policy
            and κ over the same engine deployments (`ServeEngine` handles), as many at a time.

Both arms solve the same problems, in A-B-B-A order (direct and router on one half, then router
and direct on the other), each run starting with empty vLLM prefix caches; the table says
for how many requests the two took exactly the same steps (same writer per step). Also measured:
the policy's decision latency per step (one draft's features, as the router decides them).
Goal: router p50 latency <= 1.05x direct; decision latency < 1 ms per step.

    python -m benchmarks.serving --config configs/testbed.yaml [--quick] [--record]
        [--policy FOLDER | hand_set] [--kappa 0.5]
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.common import (
    Table,
    connect_ray,
    label,
    parse_args,
    percentile,
    report,
    timed,
)
from pipeline.controller import Controller
from pipeline.data import load_split
from pipeline.policy import HAND_SET, load_policy
from pipeline.rules import make_rule

APP = "steproute-bench"


def _arguments(parser) -> None:
    parser.add_argument(
        "--policy",
        default=None,
        help=f"RouterPolicy folder or '{HAND_SET}' (default: <output_dir>/policy when trained)",
    )
    parser.add_argument("--kappa", type=float, default=0.5, help="escalation threshold κ")


def _policy(cfg, chosen: str | None) -> str:
    """The policy to serve: `--policy`, else the trained one once calibrated, else `HAND_SET`."""
    if chosen:
        return chosen if chosen == HAND_SET else str(Path(chosen).resolve())
    trained = Path(cfg.output_dir) / "policy"
    return str(trained.resolve()) if (trained / "operating_points.json").exists() else HAND_SET


def start_router(config: str, policy: str) -> str:
    """The Serve app on a free loopback port; returns its base URL once healthy."""
    from ray import serve

    from serve_app.app import build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    overrides = {"serve": {"policy": policy, "auth": {"mode": "off"}, "max_ongoing_requests": 256}}
    serve.run(build_app({"config": config, "overrides": overrides}), name=APP, route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while httpx.get(f"{base}/health", timeout=120).status_code != 200:
        if time.time() > deadline:
            raise RuntimeError("the router did not become healthy within 300 s")
        time.sleep(1)
    return base


async def _engine_handles(cfg) -> dict:
    """The app's engine deployments as `StepEngine`s, as the router holds them."""
    from ray import serve

    from serve_app.engines import ServeEngine

    engines = {}
    for model in cfg.models:
        handle = serve.get_deployment_handle(f"engine-{model.name}", app_name=APP)
        info = await handle.info.remote()
        engines[model.name] = ServeEngine(handle, info, cfg.serve.request_timeout_s)
    return engines


async def _reset_prefix_caches(engines: dict) -> None:
    for engine in engines.values():
        await engine.handle.reset_prefix_cache.remote()


async def _closed_loop(problems, concurrency: int, solve) -> tuple[list[float], float, list]:
    """`concurrency` clients, each solving the next problem as soon as its last one is done.
    Returns each request's latency, the wall time, and each problem's step writers."""
    queue = list(enumerate(problems))
    queue.reverse()
    latencies: list[float] = []
    writers: list = [None] * len(problems)

    async def client() -> None:
        while queue:
            index, problem = queue.pop()
            started = time.perf_counter()
            writers[index] = await solve(problem)
            latencies.append(time.perf_counter() - started)

    with timed() as t:
        await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, t.seconds, writers


async def router_arm(base: str, problems, concurrency: int, kappa: float):
    async with httpx.AsyncClient(base_url=base, timeout=600) as http:

        async def solve(problem) -> list[str]:
            response = await http.post(
                "/v1/chat/completions",
                json={
                    "model": "router",
                    "messages": [{"role": "user", "content": problem.question}],
                    "routing": {"kappa": kappa},
                },
            )
            response.raise_for_status()
            return [step["model"] for step in response.json()["routing"]["steps"]]

        return await _closed_loop(problems, concurrency, solve)


async def direct_arm(controller: Controller, rule, problems, concurrency: int):
    async def solve(problem) -> list[str]:
        state = controller.start(problem)
        return [step.model async for step in controller.solve(state, rule)]

    return await _closed_loop(problems, concurrency, solve)


async def decision_latency(controller: Controller, rule, problem, repeats: int) -> float:
    """Seconds per `decide` on one draft's observation (the router decides per request)."""
    state = controller.start(problem)
    drafts = await controller.draft([state])
    observation = controller.observe([state], drafts)
    rule.decide_with_scores(observation)  # warm-up
    with timed() as t:
        for _ in range(repeats):
            rule.decide_with_scores(observation)
    return t.seconds / repeats


@dataclass
class Arm:
    """One arm's requests at one concurrency, both halves of the A-B-B-A order together."""

    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    writers: dict[str, list[str]] = field(default_factory=dict)  # problem id -> step writers


async def measure_level(
    controller: Controller, engines: dict, rule, base: str, problems, concurrency: int, kappa: float
) -> dict[str, Arm]:
    """Both arms on the same problems, each with empty prefix caches."""
    # A-B-B-A: each arm solves both halves, one early and one late, so that drift of the
    # machine (other processes, caches, clocks) falls on both arms alike.
    half = len(problems) // 2
    arms = {"direct": Arm(), "router": Arm()}
    for name, part in (("direct", 0), ("router", 0), ("router", 1), ("direct", 1)):
        subset = problems[:half] if part == 0 else problems[half:]
        await _reset_prefix_caches(engines)
        if name == "direct":
            latencies, wall, writers = await direct_arm(controller, rule, subset, concurrency)
        else:
            latencies, wall, writers = await router_arm(base, subset, concurrency, kappa)
        arm = arms[name]
        arm.latencies += latencies
        arm.wall += wall
        arm.writers |= {p.id: w for p, w in zip(subset, writers, strict=True)}
    return arms


def overhead_row(concurrency: int, problems, arms: dict[str, Arm]) -> list:
    """One table row: latency percentiles and throughput of both arms, and their agreement."""
    direct, router = arms["direct"], arms["router"]
    same = sum(direct.writers[p.id] == router.writers[p.id] for p in problems)
    p50 = (percentile(router.latencies, 50), percentile(direct.latencies, 50))
    p95 = (percentile(router.latencies, 95), percentile(direct.latencies, 95))
    count = len(problems)
    return [
        concurrency,
        count,
        p50[0],
        p95[0],
        p50[1],
        p95[1],
        f"{p50[0] / p50[1] - 1:+.1%}",
        f"{p95[0] / p95[1] - 1:+.1%}",
        count / router.wall,
        count / direct.wall,
        f"{same}/{count}",
    ]


async def measure(cfg, base: str, rule, problems, levels, kappa: float, decisions: int):
    """The table rows, one per (clients, requests) level, and the policy's decision latency."""
    engines = await _engine_handles(cfg)
    controller = Controller(cfg, engines)
    warm_up = problems[-2:-1]  # first calls through each path are not measured
    await direct_arm(controller, rule, warm_up, 1)
    await router_arm(base, warm_up, 1, kappa)
    rows, offset = [], 0
    for concurrency, count in levels:
        chosen = problems[offset : offset + count]
        offset += count
        arms = await measure_level(controller, engines, rule, base, chosen, concurrency, kappa)
        rows.append(overhead_row(concurrency, chosen, arms))
        p50 = percentile(arms["router"].latencies, 50)
        print(f"{concurrency} clients: router p50 {p50:.3f} s", flush=True)
    return rows, await decision_latency(controller, rule, problems[-1], decisions)


def main(argv=None) -> None:
    args = parse_args("Router overhead vs. direct engine calls", argv, extra=_arguments)
    cfg = args.cfg
    levels = [(1, 4), (2, 4)] if args.quick else [(1, 32), (8, 64), (32, 128)]
    started = time.perf_counter()
    policy = _policy(cfg, args.policy)
    connect_ray()
    from ray import serve

    base = start_router(args.config, policy)
    problems = load_split(cfg.dataset, cfg.evaluation.split)
    rule = make_rule("policy", policy=load_policy(policy), threshold=args.kappa)
    decisions = 200 if args.quick else 5000
    try:
        rows, decide = asyncio.run(
            measure(cfg, base, rule, problems, levels, args.kappa, decisions)
        )
    finally:
        serve.delete(APP)
    table = Table(
        f"Serving overhead — {label(cfg)}",
        [
            "clients",
            "requests",
            "router p50 s",
            "router p95 s",
            "direct p50 s",
            "direct p95 s",
            "overhead p50",
            "overhead p95",
            "router req/s",
            "direct req/s",
            "same steps",
        ],
    )
    for row in rows:
        table.add(*row)
    table.notes = [
        f"policy: {'hand-set linear' if policy == HAND_SET else 'trained'} at κ {args.kappa}; "
        f"policy decision latency: {decide * 1e3:.3f} ms per step (one draft; goal < 1 ms)",
        "overhead = router latency / direct latency - 1; goal: <= +5 % at p50",
        "direct = Controller.solve on the same engine deployments from the benchmark process "
        "(no HTTP, no proxy, no ingress); prefix caches emptied before every arm",
    ]
    report(args, [table], started)


if __name__ == "__main__":
    main()
