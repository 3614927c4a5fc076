"""The `Router` ingress deployment: OpenAI-compatible HTTP in front of the stepwise controller.

Per request the router builds the problem from the last user message (chat) or the prompt
(completions), picks the operating point named by the model id (or by the `routing` body field),
and runs `Controller.solve`: the same draft → observe → decide → escalate loop the evaluation
measured. Steps of concurrent requests meet in vLLM's continuous batching, one engine call each.

What each model id means (`router-b0.30`, `router-a0.99`, `router`, `small`, `large`) is
`serve_app.routes`; exceptions become OpenAI-style HTTP errors in `api_error`, here.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.calibration import OperatingPoint
from pipeline.config import ExperimentConfig
from pipeline.data import Problem
from serve_app import api
from serve_app.api import APIError
from serve_app.engines import EngineUnavailable, ServeEngine
from serve_app.metrics import RouterMetrics
from serve_app.routes import Route, build_routes

log = logging.getLogger(__name__)

__all__ = ["Router", "RouterMetrics", "api_error"]


app = FastAPI(title="steproute router", docs_url=None, redoc_url=None)


def api_error(exc: Exception) -> APIError:
    """What an exception means to a client: its own `APIError`, 503 for an engine that did not
    answer, 404/405 for a path or method the app does not have, 500 (logged) for the rest."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, EngineUnavailable):
        return APIError(503, str(exc), type="server_error", code="engine_unavailable")
    if isinstance(exc, StarletteHTTPException):
        return APIError(exc.status_code, str(exc.detail))
    log.exception("request failed")
    return APIError(500, "internal error; the router's log has the details", type="server_error")


def _shutting_down() -> APIError:
    return APIError(503, "the router is shutting down", type="server_error", code="shutting_down")


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Unknown paths and methods: FastAPI raises before any endpoint runs.
    error = api_error(exc)
    return JSONResponse(error.body(), status_code=error.status)


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Router:
    def __init__(
        self,
        cfg: dict,
        policy_dir: str | None,
        points: list[dict],
        api_keys: list[str],
        engines: dict | None = None,
        engines_app: str | None = None,
    ) -> None:
        from pipeline.policy import load_policy

        self.cfg = ExperimentConfig.model_validate(cfg)
        self.policy = load_policy(policy_dir) if policy_dir else None  # None: a baseline rule
        # A sweep's front names a policy folder per point; others use the folder's own policy.
        self.point_policies = {
            p["policy"]: load_policy(p["policy"]) for p in points if p.get("policy")
        }
        operating_points = [OperatingPoint(**p) for p in points]
        self.routes, self.default = build_routes(self.cfg, operating_points)
        # What a normalized cost is a fraction of (None for points calibrated before it was kept).
        self.large_only_cost = next(
            (p.large_only_cost for p in operating_points if p.large_only_cost), None
        )
        self.api_keys = [k.encode() for k in api_keys]
        self.handles = engines
        self.engines_app = engines_app
        self.serve_cfg = self.cfg.serve
        small = self.cfg.models[0]
        self.max_prompt_tokens = (
            self.serve_cfg.max_prompt_tokens or (small.max_model_len or 2048) // 2
        )
        self.max_tokens = self.serve_cfg.max_tokens or self.cfg.routing.max_total_tokens
        self.in_flight = 0
        self.draining = False  # set by `drain`: new requests get 503, those in flight finish
        self._controller = None
        self._starting: asyncio.Lock | None = None
        self.metrics = RouterMetrics()

    # ------------------------------------------------------------------ engines

    async def _get_controller(self):
        if self._controller is not None:
            return self._controller
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._controller is None:
                from pipeline.controller import Controller

                engines = {}
                # The ladder, and the PRM when a route scores drafts with it (prm_threshold).
                for model in self.cfg.models_for({r.rule for r in self.routes.values()}):
                    if self.handles is not None:
                        handle = self.handles[model.name]
                    else:
                        handle = serve.get_deployment_handle(
                            f"engine-{model.name}", app_name=self.engines_app
                        )
                    try:
                        info = await asyncio.wait_for(
                            handle.info.remote(), self.serve_cfg.request_timeout_s
                        )
                    except Exception as exc:
                        raise EngineUnavailable(
                            f"engine '{model.name}' is unavailable: {exc}"
                        ) from exc
                    engines[model.name] = ServeEngine(
                        handle,
                        info,
                        self.serve_cfg.request_timeout_s,
                        self.metrics.observe_step_latency,
                    )
                self._controller = Controller(self.cfg, engines)
        return self._controller

    # ------------------------------------------------------------------ checks

    def _authorize(self, request: Request) -> None:
        if not self.api_keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise APIError(
                401,
                "missing API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )
        if not any(hmac.compare_digest(key.strip().encode(), k) for k in self.api_keys):
            raise APIError(401, "invalid API key", code="invalid_api_key")

    async def _json(self, request: Request):
        limit = self.serve_cfg.max_request_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"request body over {limit} bytes", code="request_too_large")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise APIError(413, f"request body over {limit} bytes", code="request_too_large")
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the request body is not valid JSON: {exc}") from None

    def _route(self, req) -> Route:
        route = self.routes.get(req.model)
        if route is None:
            raise APIError(
                404,
                f"model '{req.model}' does not exist; available: {sorted(self.routes)}",
                param="model",
                code="model_not_found",
            )
        choice = req.routing
        if choice is None:
            return route
        if not route.routed:
            raise APIError(
                400, f"'routing' applies to router models, not '{req.model}'", param="routing"
            )
        if choice.kappa is not None:
            return Route(req.model, route.rule, choice.kappa)
        budgets = [
            r for r in self.routes.values() if r.budget is not None and r.model_id != "router"
        ]
        fitting = [r for r in budgets if r.budget <= choice.budget + 1e-9]
        if not fitting:
            known = sorted(r.budget for r in budgets)
            raise APIError(
                400,
                f"no operating point within budget {choice.budget}; calibrated budgets: {known}",
                param="routing.budget",
            )
        return max(fitting, key=lambda r: r.budget)

    def _rule(self, route: Route):
        from pipeline.rules import make_rule

        if not route.routed:
            return make_rule(route.rule)
        if route.rule != "policy":  # a calibrated baseline, e.g. prm_threshold
            return make_rule(route.rule, threshold=route.kappa)
        policy = self.policy
        if route.point is not None and route.point.policy:
            policy = self.point_policies[route.point.policy]
        return make_rule("policy", policy=policy, threshold=route.kappa)

    # ------------------------------------------------------------------ endpoints

    async def stats(self) -> dict:
        """This replica's requests in flight and resident memory (the soak test reads them)."""
        import psutil

        return {"in_flight": self.in_flight, "rss_bytes": psutil.Process().memory_info().rss}

    async def drain(self) -> int:
        """Stop taking requests (they get 503); returns how many are still in flight. Called by
        `steproute serve` on SIGTERM / Ctrl-C through the app's handle, until it returns 0."""
        self.draining = True
        return self.in_flight

    @app.get("/health")
    async def health(self) -> JSONResponse:
        if self.draining:
            return self._error(_shutting_down())
        try:
            await self._get_controller()
        except Exception as exc:
            return self._error(exc)
        return JSONResponse({"status": "ok", "in_flight": self.in_flight})

    @app.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        try:
            self._authorize(request)
        except Exception as exc:
            return self._error(exc)
        data = [
            {
                "id": route.model_id,
                "object": "model",
                "created": 0,
                "owned_by": "steproute",
                "routing": route.describe(),
            }
            for route in self.routes.values()
        ]
        return JSONResponse({"object": "list", "data": data})

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        return await self._answer(request, api.ChatRequest)

    @app.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._answer(request, api.CompletionRequest)

    # ------------------------------------------------------------------ the work

    async def _answer(self, request: Request, kind):
        model = "?"
        try:
            self._authorize(request)
            req = api.parse_request(kind, await self._json(request))
            model = req.model
            route = self._route(req)
            limit = req.token_limit or self.max_tokens
            if limit > self.max_tokens:
                raise APIError(
                    400,
                    f"max_tokens {limit} is over this router's limit {self.max_tokens}",
                    param="max_tokens",
                )
            question = req.question
            if self.draining:
                raise _shutting_down()
            if self.in_flight >= self.serve_cfg.max_ongoing_requests:
                raise APIError(
                    429,
                    f"the router is at capacity ({self.serve_cfg.max_ongoing_requests} requests "
                    "in flight); retry shortly",
                    type="rate_limit_error",
                    code="overloaded",
                )
            controller = await self._get_controller()
            rid = api.new_id(req.id_prefix)
            state = controller.start(Problem(id=rid, question=question, gold_answer=""))
            prompt = state.prompt_lengths[controller.small]
            if prompt > self.max_prompt_tokens:
                raise APIError(
                    422,
                    f"the prompt is {prompt} tokens; this router takes at most "
                    f"{self.max_prompt_tokens}",
                    param=req.prompt_param,
                    code="context_length_exceeded",
                )
            state.token_limit = limit
            rule = self._rule(route)
            self.in_flight += 1
            if req.stream:
                return StreamingResponse(
                    self._stream(controller, state, rule, route, req, rid),
                    media_type="text/event-stream",
                )
            try:
                async for _ in controller.solve(state, rule):
                    pass
            finally:
                self.in_flight -= 1
            routing = self._finish(state, route, req.model)
            headers = api.routing_headers(routing, self.large_only_cost)
            return JSONResponse(req.response(rid, state, routing), headers=headers)
        except Exception as exc:
            return self._error(exc, model)

    async def _stream(self, controller, state, rule, route, req, rid) -> AsyncIterator[str]:
        def event(payload: dict) -> str:
            return f"data: {json.dumps(payload)}\n\n"

        try:
            for chunk in req.opening_chunks(rid):
                yield event(chunk)
            async for step in controller.solve(state, rule):
                info = api.step_info(len(state.steps) - 1, step)
                yield event(req.step_chunk(rid, step.text, routing_step=info))
            routing = self._finish(state, route, req.model)
            yield event(req.final_chunk(rid, api.finish_reason(state), routing=routing))
            if req.include_usage:
                yield event(req.usage_chunk(rid, state))
            yield "data: [DONE]\n\n"
        except Exception as exc:  # the status line is gone: the error goes in the stream
            error = self._error(exc, req.model)
            yield f"data: {error.body.decode()}\n\n"
        finally:
            self.in_flight -= 1

    def _finish(self, state, route: Route, model: str) -> dict:
        name = route.point.name if route.point else route.rule
        kappa = route.kappa if route.routed else None
        routing = api.routing_summary(state, name, kappa, route.rule)
        if routing["kappa"] is not None and not math.isfinite(routing["kappa"]):
            routing["kappa"] = None  # "never escalate": JSON has no infinity
        self.metrics.count_answer(state, model)
        return routing

    def _error(self, exc: Exception, model: str | None = None) -> JSONResponse:
        """The one place an exception becomes an HTTP error (OpenAI's error JSON): every
        endpoint, and the stream's last event, answer through it. `model`: the model id the
        request asked for, counted in `steproute_requests`; None for requests that name none."""
        error = api_error(exc)
        if model is not None:
            self.metrics.count_error(model, error.status)
        return JSONResponse(error.body(), error.status)
