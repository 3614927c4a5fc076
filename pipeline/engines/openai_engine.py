"""`OpenAIEngine`: the same `StepRequest -> StepResult` over an OpenAI-compatible completions API.

For closed models and remote vLLM servers. The prompt goes out as token ids (vLLM and the
OpenAI legacy completions API accept them) and, where the server offers it (`vllm serve` does,
through `return_token_ids`), the step comes back as token ids too, so contexts are never
re-tokenized. A server that returns only text gets its text tokenized with the model's own
tokenizer, with a warning once. Logprobs are requested when the request asks for them; a server
that gives none yields empty `token_logprobs`, and the features that need them fall back to
neutral values (see `pipeline.features.draft_stats`) with a warning once.

Transient failures (HTTP 429 and 5xx, timeouts, refused connections) are retried with
exponential back-off and jitter, honouring `Retry-After`; other errors raise at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random

import httpx

from pipeline.config import ModelConfig
from pipeline.engines.types import StepRequest, StepResult

log = logging.getLogger(__name__)

__all__ = ["OpenAIEngine", "OpenAIEngineError"]

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
DEFAULT_MAX_MODEL_LEN = 32768


class OpenAIEngineError(RuntimeError):
    """The server refused a request for a reason a retry would not fix, or kept failing."""


class OpenAIEngine:
    def __init__(
        self,
        model: ModelConfig,
        *,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 20.0,
    ) -> None:
        if not model.api_base:
            raise ValueError(f"model '{model.name}': engine 'openai' needs api_base")
        api_key = os.environ.get(model.api_key_env, "") if model.api_key_env else ""
        if model.api_key_env and not api_key:
            raise ValueError(
                f"model '{model.name}': environment variable {model.api_key_env} (api_key_env) "
                "is not set; fix: export it with the API key"
            )
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=model.api_base.rstrip("/"), headers=headers, timeout=timeout_s
        )
        self.model = model
        self.name = model.name
        self.max_model_len = model.max_model_len or DEFAULT_MAX_MODEL_LEN
        self.fingerprint = f"{model.path}@{model.revision or 'main'}:{model.api_base}"
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.retries = 0  # transient failures retried so far (for tests and logs)
        self._tokenizer = None
        self._warned: set[str] = set()

    # ---------------------------------------------------------------- HTTP with retries

    async def _post(self, payload: dict) -> dict:
        for attempt in range(self.max_retries + 1):
            try:
                response = await self._client.post("/completions", json=payload)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                reason, wait = f"{type(exc).__name__}: {exc}", None
            else:
                if response.status_code == 200:
                    return response.json()
                if response.status_code not in RETRY_STATUS:
                    raise OpenAIEngineError(
                        f"{self.name}: HTTP {response.status_code} from "
                        f"{self._client.base_url}/completions: {response.text[:500]}"
                    )
                reason = f"HTTP {response.status_code}"
                wait = _retry_after(response)
            if attempt == self.max_retries:
                raise OpenAIEngineError(
                    f"{self.name}: giving up after {self.max_retries + 1} attempts ({reason})"
                )
            if wait is None:
                wait = min(self.max_backoff_s, self.backoff_s * 2**attempt)
                wait *= 0.5 + random.random()  # jitter: callers that failed together spread out
            self.retries += 1
            log.warning("%s: %s, retry %d in %.1f s", self.name, reason, attempt + 1, wait)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    # ---------------------------------------------------------------- one step

    async def generate(self, request: StepRequest) -> StepResult:
        prompt = list(request.prompt_token_ids)
        room = self.max_model_len - len(prompt)
        if room <= 0:
            return StepResult((), "", (), (), "length", len(prompt), 0)
        scored = min(request.score_tokens, len(prompt) - 1)
        body = await self._post(self._payload(request, prompt, room, scored))
        return self._step_result(request, prompt, scored, body)

    def _payload(self, request: StepRequest, prompt: list[int], room: int, scored: int) -> dict:
        """The completions request for one step; `scored` prompt tokens come back scored."""
        payload = {
            "model": self.model.path,
            "prompt": prompt,
            "max_tokens": min(request.max_tokens, room),
            "temperature": request.temperature,
            "stop": list(request.stop),
            # vLLM extensions; servers that do not know them ignore them.
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

    def _step_result(
        self, request: StepRequest, prompt: list[int], scored: int, body: dict
    ) -> StepResult:
        """The server's answer as a `StepResult`, whichever of token ids and logprobs it gave."""
        choice = body["choices"][0]
        text = choice.get("text") or ""
        logprobs = choice.get("logprobs") or {}
        token_logprobs = list(logprobs.get("token_logprobs") or [])
        top = list(logprobs.get("top_logprobs") or [])

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

        ids = choice.get("token_ids")
        if ids is None:
            ids = self._tokenize(text)
        want_logprobs = request.n_logprobs > 0 or scored > 0
        if want_logprobs and not token_logprobs and ids:
            self._warn_once("logprobs", "server returned no logprobs; confidence features degrade")
        finish = choice.get("finish_reason") or "stop"
        if finish == "stop" and choice.get("stop_reason") is None and "stop_reason" in choice:
            finish = "eos"  # vLLM reports the eos token and stop strings both as "stop"
        usage = body.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        return StepResult(
            token_ids=tuple(ids),
            text=text,
            token_logprobs=tuple(_number(lp) for lp in token_logprobs[: len(ids)]),
            top_logprobs=tuple(
                tuple(sorted((v for v in (entry or {}).values()), reverse=True))[
                    : request.n_logprobs
                ]
                for entry in top[: len(ids)]
            )
            if request.n_logprobs
            else (),
            finish_reason="length" if finish == "length" else finish,
            prompt_tokens=len(prompt),
            cached_prompt_tokens=int(cached),
            prompt_logprobs=prompt_logprobs,
        )

    async def generate_batch(self, requests: list[StepRequest]) -> list[StepResult]:
        """Requests go out concurrently; the server batches them."""
        return list(await asyncio.gather(*(self.generate(r) for r in requests)))

    async def reset_prefix_cache(self) -> None:
        """A no-op: the server's prefix cache is not this client's to reset."""

    async def close(self) -> None:
        await self._client.aclose()

    aclose = close

    # ---------------------------------------------------------------- degraded paths

    def _tokenize(self, text: str) -> list[int]:
        self._warn_once(
            "token_ids",
            "server returned no token ids; tokenizing its text with the local tokenizer",
        )
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(
                self.model.path, revision=self.model.revision
            )
        return self._tokenizer.encode(text, add_special_tokens=False)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s: %s", self.name, message)


def _number(value) -> float:
    return float(value) if value is not None else math.nan


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
