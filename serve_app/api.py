"""The OpenAI-compatible wire format: request models, error bodies, response and chunk builders.

Requests are validated here, before any engine is touched; every failure becomes an
`APIError`, which the router turns into the OpenAI error JSON with the right status.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.trajectory import ReasoningState

__all__ = [
    "APIError",
    "ChatRequest",
    "CompletionRequest",
    "RoutingChoice",
    "chat_chunk",
    "chat_response",
    "completion_chunk",
    "completion_response",
    "error_body",
    "finish_reason",
    "parse_request",
    "routing_headers",
    "routing_summary",
    "step_info",
    "usage",
]


class APIError(Exception):
    """An error a client can act on: HTTP status + OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# ---------------------------------------------------------------------------- requests


class _Lenient(BaseModel):
    # OpenAI clients send many optional fields (user, metadata, ...): unknown ones are ignored.
    model_config = ConfigDict(extra="ignore")


class RoutingChoice(_Lenient):
    """The `routing` body field: an operating point by budget, or a raw threshold."""

    budget: float | None = Field(None, gt=0, description="Fraction of large-only cost.")
    kappa: float | None = Field(None, ge=0, le=1, description="Escalate when p(escalate) ≥ κ.")

    @model_validator(mode="after")
    def _one_of(self) -> RoutingChoice:
        if (self.budget is None) == (self.kappa is None):
            raise ValueError("routing takes exactly one of 'budget' or 'kappa'")
        return self


class _Common(_Lenient):
    model: str = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    temperature: float | None = None
    n: int | None = None
    routing: RoutingChoice | None = None

    @model_validator(mode="after")
    def _supported(self) -> _Common:
        if self.n not in (None, 1):
            raise ValueError("n must be 1: the router returns one routed solution per request")
        if self.temperature not in (None, 0, 0.0):
            raise ValueError(
                "temperature must be 0 or omitted: steps are decoded greedily, which is what "
                "the policy was calibrated on"
            )
        return self

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class _TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    @property
    def question(self) -> str:
        """The problem: the last user message (earlier turns and system prompts are not used;
        the prompt format is the benchmark's, as in training)."""
        users = [m for m in self.messages if m.role == "user"]
        if not users or not users[-1].text.strip():
            raise APIError(400, "messages need a non-empty 'user' message", param="messages")
        return users[-1].text

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    # What differs between the two endpoints lives on the request type; the router asks it.
    id_prefix: ClassVar[str] = "chatcmpl"
    prompt_param: ClassVar[str] = "messages"

    def response(self, rid: str, state: ReasoningState, routing: dict) -> dict:
        return chat_response(rid, self.model, state, routing)

    def opening_chunks(self, rid: str) -> list[dict]:
        return [chat_chunk(rid, self.model, {"role": "assistant", "content": ""})]

    def step_chunk(self, rid: str, text: str, **extra: Any) -> dict:
        return chat_chunk(rid, self.model, {"content": text}, **extra)

    def final_chunk(self, rid: str, finish: str, **extra: Any) -> dict:
        return chat_chunk(rid, self.model, {}, finish, **extra)

    def usage_chunk(self, rid: str, state: ReasoningState) -> dict:
        return chat_chunk(rid, self.model, None, usage=usage(state))


class CompletionRequest(_Common):
    prompt: str | list[str]
    echo: bool = False

    @model_validator(mode="after")
    def _single_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("prompt must be one string (batches of prompts are not supported)")
        if self.echo:
            raise ValueError("echo is not supported")
        return self

    @property
    def question(self) -> str:
        text = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        if not text.strip():
            raise APIError(400, "prompt must not be empty", param="prompt")
        return text

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    id_prefix: ClassVar[str] = "cmpl"
    prompt_param: ClassVar[str] = "prompt"

    def response(self, rid: str, state: ReasoningState, routing: dict) -> dict:
        return completion_response(rid, self.model, state, routing)

    def opening_chunks(self, rid: str) -> list[dict]:
        return []

    def step_chunk(self, rid: str, text: str, **extra: Any) -> dict:
        return completion_chunk(rid, self.model, text, **extra)

    def final_chunk(self, rid: str, finish: str, **extra: Any) -> dict:
        return completion_chunk(rid, self.model, "", finish, **extra)

    def usage_chunk(self, rid: str, state: ReasoningState) -> dict:
        return completion_chunk(rid, self.model, None, usage=usage(state))


def parse_request(kind: type[_Common], payload: Any) -> _Common:
    if not isinstance(payload, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return kind.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        raise APIError(400, f"{where}: {message}" if where else message, param=where) from None


# ---------------------------------------------------------------------------- responses


def finish_reason(state: ReasoningState) -> str:
    return "stop" if state.stop_reason in ("answer", "eos") else "length"


def step_info(index: int, step) -> dict:
    return {
        "index": index,
        "model": step.model,
        "tokens": len(step.token_ids),
        "cost": step.cost,
        "escalated": step.escalated,
        "escalation_probability": step.score,
    }


def usage(state: ReasoningState) -> dict:
    completion = sum(len(step.token_ids) for step in state.steps)
    prompt = next(iter(state.prompt_lengths.values()))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def routing_summary(
    state: ReasoningState, point: str, kappa: float | None, rule: str | None = None
) -> dict:
    """Per step and per model: who wrote what, and what it cost (drafts, and PRM scoring where
    the rule scores drafts, included)."""
    models = sorted(set(state.cost_by_model) | {s.model for s in state.steps})
    totals = {
        name: {
            "steps": sum(s.model == name for s in state.steps),
            "tokens": sum(len(s.token_ids) for s in state.steps if s.model == name),
            "generated_tokens": state.tokens_by_model.get(name, 0),
            "cost": state.cost_by_model.get(name, 0.0),
        }
        for name in models
    }
    steps = len(state.steps)
    return {
        "operating_point": point,
        "rule": rule,
        "kappa": kappa,
        "steps": [step_info(i, s) for i, s in enumerate(state.steps)],
        "totals": totals,
        "cost": state.cost,
        "escalations": state.escalations,
        "escalation_rate": state.escalations / steps if steps else 0.0,
        "routing_ms": state.routing_seconds * 1000.0,
        "stop_reason": state.stop_reason,
    }


def routing_headers(routing: dict, large_only_cost: float | None) -> dict[str, str]:
    """The answer's routing totals as response headers (a gateway can read them without parsing
    the body): `x-steproute-cost` (absolute, in the cost model's units),
    `x-steproute-cost-normalized` (a fraction of the calibration split's mean large-only cost,
    where the operating points know it), `x-steproute-escalations`, `x-steproute-routing-ms`."""
    headers = {
        "x-steproute-cost": repr(float(routing["cost"])),
        "x-steproute-escalations": str(routing["escalations"]),
        "x-steproute-routing-ms": f"{routing['routing_ms']:.3f}",
    }
    if large_only_cost:
        headers["x-steproute-cost-normalized"] = repr(float(routing["cost"]) / large_only_cost)
    return headers


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def chat_response(rid: str, model: str, state: ReasoningState, routing: dict) -> dict:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": state.solution},
                "finish_reason": finish_reason(state),
                "logprobs": None,
            }
        ],
        "usage": usage(state),
        "routing": routing,
    }


def completion_response(rid: str, model: str, state: ReasoningState, routing: dict) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": state.solution,
                "finish_reason": finish_reason(state),
                "logprobs": None,
            }
        ],
        "usage": usage(state),
        "routing": routing,
    }


def chat_chunk(rid: str, model: str, delta: dict, finish: str | None = None, **extra: Any) -> dict:
    choices = (
        []
        if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    )
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        **extra,
    }


def completion_chunk(
    rid: str, model: str, text: str | None, finish: str | None = None, **extra: Any
) -> dict:
    choices = (
        []
        if text is None
        else [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]
    )
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        **extra,
    }
