"""Serving throughput and overhead: the router endpoint against the same steps taken directly
and by the rollout env, on the same engine deployments.

For 1, 8, 32 and 64 concurrent clients (problems in flight):

    router  `POST /v1/chat/completions` over HTTP (model `router`, a fixed κ) from aiohttp
            clients, through Serve's proxy to the `Router` replica, or with `serve.ingress:
            direct` (`--ingress direct`) straight to the replica;
    direct  the router's work minus HTTP: in this process, `Controller.solve` with the same policy
            and κ over the same engine deployments (`ServeEngine` handles), as many at a time;
    env     the rollout env (`StepRoutingEnv`) over the same problems and deployments, that many
            in flight, the same policy's actions: what the engines allow when every round's
            steps are batched.

All arms solve the same problems three times, in A-B-C, C-B-A, A-B-C order, each run starting
with empty vLLM prefix caches; tables give the median and the spread. The overhead table says
for how many requests router and direct took exactly the same steps (same writer per step).
Also measured: the policy's decision latency per step.
Goals: router steps/s >= 0.7x env at 32; router p50 latency <= 1.05x direct at 1, 8 and 32;
decision latency < 1 ms per step.

    python -m benchmarks.serving --config configs/testbed.yaml [--quick] [--record]
        [--policy FOLDER | hand_set] [--kappa 0.5] [--ingress proxy|direct]
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import numpy as np

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
from serve_app.request_path import free_port, use_direct_ingress, use_grpc_handles

APP = "steproute-bench"


def _arguments(parser) -> None:
    parser.add_argument(
        "--policy",
        default=None,
        help=f"RouterPolicy folder or '{HAND_SET}' (default: <output_dir>/policy when trained)",
    )
    parser.add_argument("--kappa", type=float, default=0.5, help="escalation threshold κ")
    parser.add_argument(
        "--ingress",
        choices=("proxy", "direct"),
        default=None,
        help="how HTTP reaches the router (default: the config's serve.ingress)",
    )


def _policy(cfg, chosen: str | None) -> str:
    """The policy to serve: `--policy`, else the trained one once calibrated, else `HAND_SET`."""
    if chosen:
        return chosen if chosen == HAND_SET else str(Path(chosen).resolve())
    trained = Path(cfg.output_dir) / "policy"
    return str(trained.resolve()) if (trained / "operating_points.json").exists() else HAND_SET


def router_ports(ingress: str) -> tuple[int, int]:
    """The loopback port the router will answer on, and Serve's proxy's. Call before Ray
    starts: with direct ingress, the router replica takes the first itself and the proxy gets
    another (`use_direct_ingress`); through the proxy, both are the same."""
    port = free_port()
    return (port, use_direct_ingress(port)) if ingress == "direct" else (port, port)


def start_router(config: str, policy: str, ports: tuple[int, int]) -> str:
    """The Serve app answering on loopback `ports` (see `router_ports`), through Serve's proxy
    or by direct ingress; returns its base URL once healthy."""
    from ray import serve

    from serve_app.app import build_app

    port, proxy_port = ports
    serve.start(http_options={"host": "127.0.0.1", "port": proxy_port})
    overrides = {"serve": {"policy": policy, "auth": {"mode": "off"}, "max_ongoing_requests": 256}}
    serve.run(build_app({"config": config, "overrides": overrides}), name=APP, route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=120).status_code == 200:
                return base
        except httpx.TransportError:  # a direct-ingress replica binds its port as it starts
            pass
        if time.time() > deadline:
            raise RuntimeError("the router did not become healthy within 300 s")
        time.sleep(1)


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


@contextlib.asynccontextmanager
async def router_client(base: str, kappa: float):
    """One request's solve over HTTP, from an aiohttp session (as vLLM's serving benchmark:
    on these 2 cores the load generator's own work competes with the server's, and httpx spent
    ~3x as much CPU per request)."""
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(base, timeout=timeout, connector=connector) as http:

        async def solve(problem) -> list[str]:
            body = {
                "model": "router",
                "messages": [{"role": "user", "content": problem.question}],
                "routing": {"kappa": kappa},
            }
            async with http.post("/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                answer = await response.json()
            return [step["model"] for step in answer["routing"]["steps"]]

        yield solve


def direct_solver(controller: Controller, rule):
    """One request's solve as the router does it, minus HTTP: `Controller.solve` here."""

    async def solve(problem) -> list[str]:
        state = controller.start(problem)
        return [step.model async for step in controller.solve(state, rule)]

    return solve


async def router_arm(base: str, problems, concurrency: int, kappa: float):
    async with router_client(base, kappa) as solve:
        return await _closed_loop(problems, concurrency, solve)


async def direct_arm(controller: Controller, rule, problems, concurrency: int):
    return await _closed_loop(problems, concurrency, direct_solver(controller, rule))


async def paired_run(engines: dict, solvers: dict, problems) -> dict[str, tuple]:
    """One client that sends each problem to every arm in turn, the order alternating (A-B,
    B-A, ...), each request on empty prefix caches, so that the machine's drift falls on both
    arms alike. Per arm: latencies, their sum (the arm's wall time), step writers."""
    names = list(solvers)
    latencies: dict[str, list[float]] = {name: [] for name in names}
    writers: dict[str, list] = {name: [] for name in names}
    for index, problem in enumerate(problems):
        for name in names if index % 2 == 0 else names[::-1]:
            await _reset_prefix_caches(engines)
            started = time.perf_counter()
            writers[name].append(await solvers[name](problem))
            latencies[name].append(time.perf_counter() - started)
    return {name: (latencies[name], sum(latencies[name]), writers[name]) for name in names}


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
    """One arm's runs at one concurrency: per repetition, its latencies, wall time and steps."""

    runs: list[tuple[list[float], float, int]] = field(default_factory=list)
    writers: dict[str, list[str]] = field(default_factory=dict)  # problem id -> step writers

    def add(self, latencies: list[float], wall: float, writers: list, problems) -> None:
        self.runs.append((latencies, wall, sum(len(w) for w in writers)))
        self.writers |= {p.id: w for p, w in zip(problems, writers, strict=True)}

    def rates(self, requests: int) -> tuple[list[float], list[float]]:
        """Requests/s and steps/s of each repetition."""
        return [requests / wall for _, wall, _ in self.runs], [s / w for _, w, s in self.runs]

    def p50s(self) -> list[float]:
        return [percentile(latencies, 50) for latencies, _, _ in self.runs]

    def p95s(self) -> list[float]:
        return [percentile(latencies, 95) for latencies, _, _ in self.runs]


def env_arm(cfg, engines: dict, problems, in_flight: int, rule):
    """The rollout env (`StepRoutingEnv`, as RLlib drives it) over the same problems, `in_flight`
    at a time, on the same engine deployments, with the same rule's actions: (wall, steps)."""
    from benchmarks.rollout import make_env, run_episode

    env, calls = make_env(cfg, engines, in_flight, len(problems))
    env.problems = list(problems)
    run = run_episode(env, calls, rule)
    return run.seconds, run.steps


INGRESS = {
    "proxy": "serve.ingress: proxy, through Serve's proxy to the Router replica",
    "direct": "serve.ingress: direct, Serve's direct ingress: the Router replica answers itself",
}
ORDERS = (("direct", "router", "env"), ("env", "router", "direct"), ("direct", "router", "env"))


async def measure_level(
    cfg, controller: Controller, engines: dict, rule, base: str, problems, concurrency: int, kappa
) -> dict[str, Arm]:
    """Three repetitions of every arm on the same problems, in A-B-C, C-B-A, A-B-C order (drift
    of the machine falls on all arms alike); each run starts with empty prefix caches. At one
    client, router and direct alternate request by request instead (`paired_run`): there, a
    run's drift moved the p50 by as much as ±10 %."""
    arms = {"direct": Arm(), "router": Arm(), "env": Arm()}
    for order in ORDERS:
        for name in order:
            await _reset_prefix_caches(engines)
            if name == "env":
                wall, steps = await asyncio.to_thread(
                    env_arm, cfg, engines, problems, concurrency, rule
                )
                arms["env"].runs.append(([], wall, steps))
                continue
            if concurrency == 1:  # one client: router and direct alternate request by request
                if name == "router":
                    async with router_client(base, kappa) as route:
                        solvers = {"direct": direct_solver(controller, rule), "router": route}
                        runs = await paired_run(engines, solvers, problems)
                    for arm, run in runs.items():
                        arms[arm].add(*run, problems)
                continue
            if name == "direct":
                run = await direct_arm(controller, rule, problems, concurrency)
            else:
                run = await router_arm(base, problems, concurrency, kappa)
            arms[name].add(*run, problems)
    return arms


def _median(values: list[float]) -> float:
    return float(np.median(values))


def _spread(values: list[float], digits: int = 1) -> str:
    return f"{_median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def throughput_row(concurrency: int, requests: int, arms: dict[str, Arm]) -> list:
    """Requests/s and steps/s of each arm (median [min-max] of 3), and router/env steps/s."""
    rates = {name: arm.rates(requests) for name, arm in arms.items()}
    ratio = _median(rates["router"][1]) / _median(rates["env"][1])
    return [
        concurrency,
        requests,
        *(_spread(rates[name][0]) for name in ("router", "direct", "env")),
        *(_spread(rates[name][1], 0) for name in ("router", "direct", "env")),
        f"{ratio:.2f}x",
    ]


def overhead_row(concurrency: int, problems, arms: dict[str, Arm]) -> list:
    """Latency percentiles of router and direct (median of 3), the overhead per repetition's
    p50 (median [min-max]), and whether both took the same steps."""
    direct, router = arms["direct"], arms["router"]
    same = sum(direct.writers[p.id] == router.writers[p.id] for p in problems)
    overheads = [r / d - 1 for r, d in zip(router.p50s(), direct.p50s(), strict=True)]
    p95 = _median(router.p95s()) / _median(direct.p95s()) - 1
    return [
        concurrency,
        len(problems),
        _median(router.p50s()),
        _median(router.p95s()),
        _median(direct.p50s()),
        _median(direct.p95s()),
        f"{_median(overheads):+.1%} [{min(overheads):+.1%} to {max(overheads):+.1%}]",
        f"{p95:+.1%}",
        f"{same}/{len(problems)}",
    ]


async def measure(cfg, base: str, rule, problems, levels, kappa: float, decisions: int):
    """The rows of both tables, one per (clients, requests) level, and the decision latency."""
    engines = await _engine_handles(cfg)
    controller = Controller(cfg, engines)
    warm_up = problems[-2:-1]  # first calls through each path are not measured
    await direct_arm(controller, rule, warm_up, 1)
    await router_arm(base, warm_up, 1, kappa)
    throughput, overhead, offset = [], [], 0
    for concurrency, count in levels:
        chosen = problems[offset : offset + count]
        offset += count
        arms = await measure_level(cfg, controller, engines, rule, base, chosen, concurrency, kappa)
        throughput.append(throughput_row(concurrency, count, arms))
        overhead.append(overhead_row(concurrency, chosen, arms))
        print(f"{concurrency} in flight: {throughput[-1]}", flush=True)
    return throughput, overhead, await decision_latency(controller, rule, problems[-1], decisions)


def main(argv=None) -> None:
    args = parse_args("Serving throughput and overhead", argv, extra=_arguments)
    cfg = args.cfg
    levels = [(1, 4), (2, 4)] if args.quick else [(1, 32), (8, 64), (32, 128), (64, 128)]
    started = time.perf_counter()
    policy = _policy(cfg, args.policy)
    ingress = args.ingress or cfg.serve.ingress
    use_grpc_handles()  # the direct arm's handles call the engines as the router's do
    ports = router_ports(ingress)
    connect_ray()
    from ray import serve

    base = start_router(args.config, policy, ports)
    problems = load_split(cfg.dataset, cfg.evaluation.split)
    rule = make_rule("policy", policy=load_policy(policy), threshold=args.kappa)
    decisions = 200 if args.quick else 5000
    try:
        throughput, overhead, decide = asyncio.run(
            measure(cfg, base, rule, problems, levels, args.kappa, decisions)
        )
    finally:
        serve.delete(APP)
    report(
        args,
        [
            _throughput_table(cfg, throughput, ingress),
            _overhead_table(cfg, overhead, policy, args.kappa, decide),
        ],
        started,
    )


def _throughput_table(cfg, rows: list, ingress: str) -> Table:
    table = Table(
        f"Serving throughput — {label(cfg)}",
        [
            "clients / in flight",
            "requests",
            "router req/s",
            "direct req/s",
            "env problems/s",
            "router steps/s",
            "direct steps/s",
            "env steps/s",
            "router / env steps/s",
        ],
    )
    for row in rows:
        table.add(*row)
    table.notes = [
        "each cell: median [min-max] of 3 repetitions, arms in A-B-C, C-B-A, A-B-C order on the "
        "same problems with the same policy and κ (so the same steps); at 1 client, router and "
        "direct alternate request by request (A-B, B-A, ...) within each repetition, and their "
        "req/s is requests / summed latency",
        f"router: HTTP ({INGRESS[ingress]}), that many aiohttp clients in a closed "
        "loop; direct: Controller.solve per request on the same engine deployments, no HTTP; env: "
        "the rollout env (StepRoutingEnv) with that many problems in flight on the same "
        "deployments, each round's drafts and escalations batched",
        "goal: router steps/s >= 0.7x env steps/s at 32",
    ]
    return table


def _overhead_table(cfg, rows: list, policy: str, kappa: float, decide: float) -> Table:
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
            "same steps",
        ],
    )
    for row in rows:
        table.add(*row)
    table.notes = [
        f"policy: {'hand-set linear' if policy == HAND_SET else 'trained'} at κ {kappa}; "
        f"policy decision latency: {decide * 1e3:.3f} ms per step (one draft; goal < 1 ms)",
        "latencies: median of 3 repetitions; overhead p50 = router p50 / direct p50 - 1 per "
        "repetition, median [min to max]; goal: <= +5 % at 1, 8 and 32 clients",
        "prefix caches emptied before every run (at 1 client, before every request)",
    ]
    return table


if __name__ == "__main__":
    main()
