"""`RouterMetrics`: the router's Serve metrics (Ray's metrics agent exports them to Prometheus):
requests by model id and status, kept steps by writer, escalations, cost per request and the
latency of each engine step."""

from __future__ import annotations

from collections import Counter

__all__ = ["RouterMetrics"]


class RouterMetrics:
    """The router's Serve metrics, which Ray's metrics agent exports to Prometheus."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.requests = metrics.Counter(
            "steproute_requests",
            description="Requests answered, by model id and HTTP status.",
            tag_keys=("model", "status"),
        )
        self.steps = metrics.Counter(
            "steproute_steps",
            description="Kept reasoning steps, by the model that wrote them.",
            tag_keys=("route", "writer"),
        )
        self.escalations = metrics.Counter(
            "steproute_escalations",
            description="Steps escalated past the small model's draft (rate = / steproute_steps).",
            tag_keys=("route",),
        )
        self.cost = metrics.Histogram(
            "steproute_cost_per_request",
            description="Cost per request in the configured cost model's units.",
            boundaries=[10.0**k for k in range(4, 16)],
            tag_keys=("route",),
        )
        self.step_latency = metrics.Histogram(
            "steproute_step_latency_ms",
            description="Latency of one engine step call, by model.",
            boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000],
            tag_keys=("model",),
        )

    def observe_step_latency(self, model: str, seconds: float) -> None:
        self.step_latency.observe(seconds * 1000.0, tags={"model": model})

    def count_answer(self, state, model: str) -> None:
        """A request answered in full: its steps, escalations and cost, under its model id."""
        tag = {"route": model}
        for writer, count in Counter(step.model for step in state.steps).items():
            self.steps.inc(count, tags=tag | {"writer": writer})
        if state.escalations:
            self.escalations.inc(state.escalations, tags=tag)
        self.cost.observe(state.cost, tags=tag)
        self.requests.inc(tags={"model": model, "status": "200"})

    def count_error(self, model: str, status: int) -> None:
        self.requests.inc(tags={"model": model, "status": str(status)})
