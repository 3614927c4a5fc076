"""Soak: the router under ten minutes of mixed traffic from 32 clients, all sent from here.

The traffic mixes streamed and plain requests, chat and completions, over every model id; 10 %
of requests have a bad body (broken JSON, no messages, an unknown model, sampling the router
does not do, a max_tokens over its limit), and 5 % are streams the client drops after the
first step. Every request is bounded in time. Over the run:

- no response has a 5xx status, and no request fails in transport (other than the drops);
- every bad body gets a 4xx in OpenAI's error shape;
- the router's in-flight counter is back to 0 at the end, and vLLM runs no request;
- the router replica's resident memory grows < 10 % after the first minute (warm-up).

The router is the Serve app `steproute serve` deploys (`serve_app.app.build_app`) on loopback.
Not part of `make test` (it takes the whole `--minutes`).

    python -m benchmarks.soak --config configs/testbed.yaml [--minutes 10] [--quick] [--record]
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from benchmarks.common import Table, connect_ray, label, parse_args, report
from benchmarks.serving import APP, router_ports, start_router
from pipeline.data import load_split
from pipeline.policy import HAND_SET

CLIENTS = 32
BAD_SHARE, DROP_SHARE = 0.10, 0.05
TIMEOUT_S = 120.0
ERROR_FIELDS = {"message", "type", "param", "code"}


def _arguments(parser) -> None:
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run")


@dataclass
class Tally:
    kinds: Counter = field(default_factory=Counter)  # what was sent
    statuses: Counter = field(default_factory=Counter)  # what came back
    server_errors: list[str] = field(default_factory=list)  # 5xx and transport failures
    bad_answered_4xx: int = 0  # bad bodies answered with a 4xx in the error shape
    bad_wrong: list[str] = field(default_factory=list)  # bad bodies answered otherwise


def _bad_body(rng: random.Random, question: str) -> tuple[str, bytes]:
    """A request body the router must refuse with a 4xx."""
    chat = {"model": "router", "messages": [{"role": "user", "content": question}]}
    choices = [
        ("broken JSON", b'{"model": "router", "messages": ['),
        ("no messages", json.dumps({"model": "router"}).encode()),
        ("unknown model", json.dumps(chat | {"model": "no-such-model"}).encode()),
        ("sampling", json.dumps(chat | {"temperature": 0.7}).encode()),
        ("max_tokens", json.dumps(chat | {"max_tokens": 10**7}).encode()),
    ]
    return rng.choice(choices)


def _good_body(rng: random.Random, question: str, models: list[str]) -> tuple[str, str, dict]:
    model, stream, chat = rng.choice(models), rng.random() < 0.5, rng.random() < 0.5
    if chat:
        body = {"model": model, "messages": [{"role": "user", "content": question}]}
        path = "/v1/chat/completions"
    else:
        body, path = {"model": model, "prompt": question}, "/v1/completions"
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    kind = f"{'stream' if stream else 'plain'} {'chat' if chat else 'completions'}"
    return kind, path, body


async def _one(http: httpx.AsyncClient, rng: random.Random, question: str, models, tally) -> None:
    roll = rng.random()
    if roll < BAD_SHARE:
        kind, content = _bad_body(rng, question)
        tally.kinds[f"bad: {kind}"] += 1
        reply = await http.post("/v1/chat/completions", content=content)
        tally.statuses[reply.status_code] += 1
        shape_ok = 400 <= reply.status_code < 500 and ERROR_FIELDS <= set(
            (reply.json() or {}).get("error", {})
        )
        if shape_ok:
            tally.bad_answered_4xx += 1
        else:
            tally.bad_wrong.append(f"{kind}: {reply.status_code} {reply.text[:200]}")
        return
    if roll < BAD_SHARE + DROP_SHARE:
        tally.kinds["dropped stream"] += 1
        body = {
            "model": "router",
            "stream": True,
            "messages": [{"role": "user", "content": question}],
        }
        async with http.stream("POST", "/v1/chat/completions", json=body) as reply:
            tally.statuses[reply.status_code] += 1
            async for line in reply.aiter_lines():
                if '"routing_step"' in line:
                    break  # hang up mid-stream
        return
    kind, path, body = _good_body(rng, question, models)
    tally.kinds[kind] += 1
    if body.get("stream"):
        async with http.stream("POST", path, json=body) as reply:
            tally.statuses[reply.status_code] += 1
            chunks = [line async for line in reply.aiter_lines() if line.startswith("data: ")]
        if reply.status_code >= 500 or any('"error"' in c for c in chunks):
            tally.server_errors.append(
                f"{kind}: {reply.status_code} {chunks[-1][:200] if chunks else ''}"
            )
        return
    reply = await http.post(path, json=body)
    tally.statuses[reply.status_code] += 1
    if reply.status_code >= 500:
        tally.server_errors.append(f"{kind}: {reply.status_code} {reply.text[:200]}")


async def _client(base: str, seed: int, questions, models, deadline: float, tally: Tally) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT_S) as http:
        while time.monotonic() < deadline:
            try:
                await _one(http, rng, rng.choice(questions), models, tally)
            except httpx.HTTPError as exc:
                tally.server_errors.append(f"transport: {type(exc).__name__}: {exc}")


async def _stats(handles: dict) -> tuple[dict, list[int]]:
    router = await handles["router"].stats.remote()
    engines = [await h.unfinished_requests.remote() for h in handles["engines"]]
    return router, engines


async def soak(cfg, base: str, minutes: float) -> dict:
    from ray import serve

    handles = {
        "router": serve.get_app_handle(APP),
        "engines": [
            serve.get_deployment_handle(f"engine-{m.name}", app_name=APP) for m in cfg.models
        ],
    }
    models = [m["id"] for m in httpx.get(f"{base}/v1/models", timeout=60).json()["data"]]
    questions = [p.question for p in load_split(cfg.dataset, "test")[:500]]
    tally = Tally()
    started = time.monotonic()
    deadline = started + minutes * 60
    warm_up = started + min(60.0, minutes * 60 / 5)
    clients = [
        asyncio.create_task(_client(base, seed, questions, models, deadline, tally))
        for seed in range(CLIENTS)
    ]
    await asyncio.sleep(max(0.0, warm_up - time.monotonic()))
    warm_rss = (await _stats(handles))[0]["rss_bytes"]
    await asyncio.gather(*clients)
    settle = time.monotonic() + 5.0  # the last drops' engine calls end
    while True:
        router, engines = await _stats(handles)
        if (router["in_flight"] == 0 and not any(engines)) or time.monotonic() > settle:
            break
        await asyncio.sleep(0.1)
    return {
        "tally": tally,
        "seconds": time.monotonic() - started,
        "warm_rss": warm_rss,
        "end_rss": router["rss_bytes"],
        "in_flight": router["in_flight"],
        "unfinished": sum(engines),
    }


def _table(cfg, outcome: dict, minutes: float) -> Table:
    tally = outcome["tally"]
    sent = sum(tally.kinds.values())
    bad = sum(n for kind, n in tally.kinds.items() if kind.startswith("bad"))
    growth = outcome["end_rss"] / outcome["warm_rss"] - 1
    rows = [
        (
            "requests sent",
            f"{sent} in {outcome['seconds'] / 60:.1f} min ({sent / outcome['seconds']:.1f}/s)",
            "",
        ),
        ("5xx or transport failures", str(len(tally.server_errors)), "0"),
        (
            "bad bodies answered 4xx in the error shape",
            f"{tally.bad_answered_4xx}/{bad}",
            f"{bad}/{bad}",
        ),
        ("in flight at the end", str(outcome["in_flight"]), "0"),
        ("vLLM requests running at the end", str(outcome["unfinished"]), "0"),
        (
            "router RSS after warm-up -> end",
            f"{outcome['warm_rss'] / 2**20:.0f} -> {outcome['end_rss'] / 2**20:.0f} MiB ({growth:+.1%})",
            "< +10 %",
        ),
    ]
    table = Table(
        f"Soak, {minutes:g} min at {CLIENTS} clients — {label(cfg)}", ["measure", "value", "goal"]
    )
    for row in rows:
        table.add(*row)
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(tally.kinds.items()))
    statuses = ", ".join(f"{code}: {n}" for code, n in sorted(tally.statuses.items()))
    table.notes = [f"sent: {kinds}", f"statuses: {statuses}"]
    table.notes += [f"failure: {e}" for e in tally.server_errors[:5]]
    table.notes += [f"bad body answered wrongly: {e}" for e in tally.bad_wrong[:5]]
    return table


def main(argv=None) -> None:
    args = parse_args("Soak the router with mixed traffic", argv, extra=_arguments)
    minutes = 1.0 if args.quick else args.minutes
    started = time.perf_counter()
    ingress = args.cfg.serve.ingress
    ports = router_ports(ingress)
    connect_ray()
    from ray import serve

    base = start_router(args.config, HAND_SET, ports)
    try:
        outcome = asyncio.run(soak(args.cfg, base, minutes))
    finally:
        serve.delete(APP)
    table = _table(args.cfg, outcome, minutes)
    table.notes.insert(0, f"serve.ingress: {ingress}")
    report(args, [table], started)


if __name__ == "__main__":
    main()
