"""`OpenAIEngine`: the same `StepRequest -> StepResult` over an OpenAI-compatible API.

For closed models and remote vLLM servers, in one of two protocols
(`pipeline.engines.openai_protocols`): `completions` sends the context as token ids, `chat`
sends it as messages. Where the server offers it (`vllm serve` does, through
`return_token_ids`), the step comes back as token ids too, so contexts are never
re-tokenized. A server that returns only text gets its text tokenized with the model's own
tokenizer, with a warning once. Logprobs are requested when the request asks for them; a server
that gives none yields empty `token_logprobs`, and the features that need them fall back to
neutral values (see `pipeline.features.draft_stats`) with a warning once.

Calls keep under the endpoint's limits on concurrent requests and tokens per minute
(`pipeline.engines.rate_limit`). Transient failures (HTTP 429 and 5xx, timeouts, refused
connections) are retried with exponential back-off and jitter, honouring `Retry-After`; other
errors raise at once. What each call costs is what the server billed (`usage`, cached prompt
tokens included: `StepResult.billed_tokens`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random

import httpx

from pipeline.config import ModelConfig
from pipeline.engines.openai_protocols import protocol_for, step_result
from pipeline.engines.rate_limit import RateLimiter
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
        protocol = model.endpoint.protocol
        self.fingerprint = f"{model.path}@{model.revision or 'main'}:{model.api_base}:{protocol}"
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.retries = 0  # transient failures retried so far (for tests and logs)
        self._tokenizer = None
        self._warned: set[str] = set()
        self.protocol = protocol_for(model, self._warn_once)
        endpoint = model.endpoint
        self.limiter = RateLimiter(endpoint.max_concurrent_requests, endpoint.tokens_per_minute)

    # ---------------------------------------------------------------- HTTP with retries

    async def _post(self, payload: dict, tokens: int) -> dict:
        path = self.protocol.path
        for attempt in range(self.max_retries + 1):
            try:
                async with self.limiter.slot(tokens):
                    response = await self._client.post(path, json=payload)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                reason, wait = f"{type(exc).__name__}: {exc}", None
            else:
                if response.status_code == 200:
                    return response.json()
                if response.status_code not in RETRY_STATUS:
                    raise OpenAIEngineError(
                        f"{self.name}: HTTP {response.status_code} from "
                        f"{response.request.url}: {response.text[:500]}"
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
        payload = self.protocol.payload(request, prompt, room, scored)
        body = await self._post(payload, len(prompt) + min(request.max_tokens, room))
        parts = self.protocol.parse(request, prompt, scored, body)
        ids = parts["token_ids"]
        if ids is None:
            ids = self._tokenize(parts["text"])
        want_logprobs = request.n_logprobs > 0 or scored > 0
        if want_logprobs and not parts["token_logprobs"] and ids:
            self._warn_once("logprobs", "server returned no logprobs; confidence features degrade")
        return step_result(request, prompt, parts, ids, body)

    async def generate_batch(self, requests: list[StepRequest]) -> list[StepResult]:
        """Requests go out concurrently; the server batches them."""
        return list(await asyncio.gather(*(self.generate(r) for r in requests)))

    def unfinished_requests(self) -> int:
        """Requests sent and not yet answered."""
        return self.limiter.in_flight

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
                self.model.tokenizer or self.model.path,
                revision=None if self.model.tokenizer else self.model.revision,
            )
        return self._tokenizer.encode(text, add_special_tokens=False)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s: %s", self.name, message)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
