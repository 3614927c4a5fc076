"""The two ways `OpenAIEngine` asks an OpenAI-compatible server for one reasoning step.

`CompletionsProtocol` (`endpoint.protocol: completions`): `/v1/completions` with the context as
token ids; `vllm serve` answers it, almost no closed model does.

`ChatProtocol` (`endpoint.protocol: chat`): `/v1/chat/completions`, the API every closed model
speaks. A chat API takes messages, not token ids, so the controller sends the context in words
too (`StepRequest.chat`: the user message and the solution so far). Continuing a partial chain
of thought then takes one of two forms:

- **prefill** (`endpoint.prefill: true`, vLLM-compatible servers): the solution so far is a
  final, unfinished assistant message that the server continues (`continue_final_message: true`,
  `add_generation_prompt: false`). With a chat template that renders the assistant's text as
  is, the model sees exactly the context a local engine would, and writes the same step.
- **instruction** (`endpoint.prefill: false`, any server): one user message holding the
  question, the solution so far and `NEXT_STEP_INSTRUCTION`; the reply is taken as the next
  step.

Both stop at the step separator and ask for top-k logprobs; a server that returns none still
works (the confidence features fall back to neutral values, with a warning once). A chat API has
no prompt echo, so scoring a continuation (`StepRequest.score_tokens`, the large-likelihood
verifier) gets no prompt logprobs there, also with a warning once. Each result carries what the
server billed (`StepResult.billed_tokens`, from `usage`, cached prompt tokens included).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pipeline.config import ModelConfig
from pipeline.engines.types import StepRequest, StepResult

__all__ = [
    "NEXT_STEP_INSTRUCTION",
    "ChatProtocol",
    "CompletionsProtocol",
    "protocol_for",
    "step_result",
]

NEXT_STEP_INSTRUCTION = (
    "Below is the start of a step-by-step solution. Write only its next step, in the same "
    "style, and stop. If the previous step gave the final answer, repeat that final answer."
)

Warn = Callable[[str, str], None]  # (key, message): log a degraded path once per key


def _number(value) -> float:
    return float(value) if value is not None else math.nan


def _finish(choice: dict) -> str:
    finish = choice.get("finish_reason") or "stop"
    if finish == "stop" and choice.get("stop_reason") is None and "stop_reason" in choice:
        return "eos"  # vLLM reports the eos token and stop strings both as "stop"
    return "length" if finish == "length" else finish


def _billed(body: dict) -> tuple[int, int, int] | None:
    usage = body.get("usage")
    if not usage:
        return None
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return (
        int(usage.get("prompt_tokens") or 0),
        int(cached),
        int(usage.get("completion_tokens") or 0),
    )


def _top(entries: list, k: int) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(sorted(entry, reverse=True))[:k] for entry in entries) if k else ()


class CompletionsProtocol:
    """`/v1/completions`: the context as token ids, prompt logprobs by echo."""

    path = "/completions"

    def __init__(self, model: ModelConfig) -> None:
        self.model = model
        self.vllm = model.endpoint.server == "vllm"

    def payload(self, request: StepRequest, prompt: list[int], room: int, scored: int) -> dict:
        """The request for one step; `scored` prompt tokens come back scored."""
        payload = {
            "model": self.model.path,
            "prompt": prompt,
            "max_tokens": min(request.max_tokens, room),
            "temperature": request.temperature,
            "stop": list(request.stop),
        }
        if self.vllm:  # vLLM's extensions: the stop string kept, the step's token ids returned
            payload |= {
                "include_stop_str_in_output": request.include_stop_str_in_output,
                "return_token_ids": True,
            }
        if request.seed is not None and request.temperature > 0:
            payload["seed"] = request.seed
        if request.n_logprobs > 0 or scored > 0:
            payload["logprobs"] = max(1, request.n_logprobs)
        if scored > 0:
            payload["echo"] = True  # prompt tokens come back with their logprobs
        return payload

    def parse(self, request: StepRequest, prompt: list[int], scored: int, body: dict) -> dict:
        """The answer's parts: text, token ids (None if the server gave none), logprobs."""
        choice = body["choices"][0]
        text = choice.get("text") or ""
        logprobs = choice.get("logprobs") or {}
        token_logprobs = list(logprobs.get("token_logprobs") or [])
        top = [list((entry or {}).values()) for entry in logprobs.get("top_logprobs") or []]
        prompt_logprobs: tuple[float, ...] = ()
        if scored > 0:
            # With echo, the first len(prompt) entries belong to the prompt (and `text` starts
            # with the prompt's text).
            echoed = token_logprobs[: len(prompt)]
            prompt_logprobs = tuple(_number(lp) for lp in echoed[-scored:])
            token_logprobs, top = token_logprobs[len(prompt) :], top[len(prompt) :]
            if choice.get("token_ids") is None:
                # Plain OpenAI echo: the text starts with the prompt's text.
                offsets = logprobs.get("text_offset") or []
                text = text[offsets[len(prompt)] :] if len(offsets) > len(prompt) else ""
        return {
            "text": text,
            "token_ids": choice.get("token_ids"),
            "token_logprobs": token_logprobs,
            "top": top,
            "prompt_logprobs": prompt_logprobs,
            "finish_reason": _finish(choice),
        }


class ChatProtocol:
    """`/v1/chat/completions`: the context as messages (prefill or a next-step instruction)."""

    path = "/chat/completions"

    def __init__(self, model: ModelConfig, warn: Warn) -> None:
        self.model = model
        self.vllm = model.endpoint.server == "vllm"
        self.prefill = model.endpoint.prefill
        self.warn = warn

    def messages(self, request: StepRequest) -> tuple[list[dict], bool]:
        """The messages for this context, and whether the last one is a prefill to continue."""
        if request.chat is None:
            raise ValueError(
                f"{self.model.name}: a chat endpoint needs the context in words "
                "(StepRequest.chat); the controller sets it for chat-protocol models"
            )
        user, so_far = request.chat
        if not so_far:  # the first step: the question alone, the assistant's turn opened
            return [{"role": "user", "content": user}], False
        if self.prefill:
            return [
                {"role": "user", "content": user},
                {"role": "assistant", "content": so_far},
            ], True
        content = f"{user}\n\n{NEXT_STEP_INSTRUCTION}\n\n{so_far}"
        return [{"role": "user", "content": content}], False

    def payload(self, request: StepRequest, prompt: list[int], room: int, scored: int) -> dict:
        messages, prefilled = self.messages(request)
        if scored > 0:
            self.warn(
                "prompt_logprobs",
                "a chat API cannot score a continuation (no prompt echo); the verifier's "
                "likelihood feature is neutral for this model",
            )
        payload = {
            "model": self.model.path,
            "messages": messages,
            "max_completion_tokens": min(request.max_tokens, room),
            "temperature": request.temperature,
            "stop": list(request.stop),
        }
        if self.vllm:
            payload |= {
                "include_stop_str_in_output": request.include_stop_str_in_output,
                "return_token_ids": True,
                "add_generation_prompt": not prefilled,
                "continue_final_message": prefilled,
            }
        if request.seed is not None and request.temperature > 0:
            payload["seed"] = request.seed
        if request.n_logprobs > 0:
            payload |= {"logprobs": True, "top_logprobs": request.n_logprobs}
        return payload

    def parse(self, request: StepRequest, prompt: list[int], scored: int, body: dict) -> dict:
        choice = body["choices"][0]
        text = (choice.get("message") or {}).get("content") or ""
        entries = (choice.get("logprobs") or {}).get("content") or []
        finish = _finish(choice)
        separator = request.stop[0] if request.stop else ""
        kept = request.include_stop_str_in_output and separator
        if kept and not self.vllm and finish == "stop" and not text.endswith(separator):
            # Standard servers drop the stop string; a local engine keeps it in the step.
            text += separator
        return {
            "text": text,
            "token_ids": choice.get("token_ids"),
            "token_logprobs": [entry.get("logprob") for entry in entries],
            "top": [
                [t.get("logprob") for t in entry.get("top_logprobs") or []] for entry in entries
            ],
            "prompt_logprobs": (),
            "finish_reason": finish,
        }


def protocol_for(model: ModelConfig, warn: Warn) -> CompletionsProtocol | ChatProtocol:
    if model.endpoint.protocol == "chat":
        return ChatProtocol(model, warn)
    return CompletionsProtocol(model)


def step_result(
    request: StepRequest, prompt: list[int], parts: dict, ids: list[int], body: dict
) -> StepResult:
    """A protocol's parsed answer as a `StepResult`; `ids`: the step's token ids."""
    token_logprobs = parts["token_logprobs"]
    return StepResult(
        token_ids=tuple(ids),
        text=parts["text"],
        token_logprobs=tuple(_number(lp) for lp in token_logprobs[: len(ids)]),
        top_logprobs=_top(
            [[_number(v) for v in entry] for entry in parts["top"][: len(ids)]],
            request.n_logprobs,
        ),
        finish_reason=parts["finish_reason"],
        prompt_tokens=len(prompt),
        cached_prompt_tokens=(_billed(body) or (0, 0, 0))[1],
        prompt_logprobs=parts["prompt_logprobs"],
        billed_tokens=_billed(body),
    )
