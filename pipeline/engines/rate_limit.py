"""`RateLimiter`: a provider's limits on one endpoint, kept on the client side.

Providers limit both concurrent requests and tokens per minute, and answer 429 (often with
`Retry-After`) past them. Keeping under the limits here costs less than being refused: a call
waits for a free slot (`endpoint.max_concurrent_requests`) and for room in a token bucket that
refills at `endpoint.tokens_per_minute / 60` per second (a request is counted at its prompt plus
its `max_tokens`, what the provider reserves). `OpenAIEngine` still retries a 429 that comes
anyway, honouring `Retry-After`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(
        self, max_concurrent: int | None = None, tokens_per_minute: int | None = None
    ) -> None:
        self.max_concurrent = max_concurrent
        self.tokens_per_minute = tokens_per_minute
        self.in_flight = 0
        self.most_in_flight = 0  # the peak, for tests and logs
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tokens = float(tokens_per_minute or 0)
        self._refilled = time.monotonic()
        self._bucket_lock: asyncio.Lock | None = None

    def _bind(self) -> None:
        """asyncio primitives belong to one event loop: make them for the running one."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._slots = asyncio.Semaphore(self.max_concurrent) if self.max_concurrent else None
            self._bucket_lock = asyncio.Lock()

    async def _take_tokens(self, tokens: int) -> None:
        if not self.tokens_per_minute:
            return
        capacity = float(self.tokens_per_minute)
        need = min(float(tokens), capacity)  # a request above the whole minute waits for a full one
        rate = capacity / 60.0
        async with self._bucket_lock:
            while True:
                now = time.monotonic()
                self._tokens = min(capacity, self._tokens + (now - self._refilled) * rate)
                self._refilled = now
                if self._tokens >= need:
                    self._tokens -= need
                    return
                await asyncio.sleep((need - self._tokens) / rate)

    @contextlib.asynccontextmanager
    async def slot(self, tokens: int) -> AsyncIterator[None]:
        """Hold one request slot, with `tokens` taken from the minute's budget."""
        self._bind()
        if self._slots is not None:
            await self._slots.acquire()
        try:
            await self._take_tokens(tokens)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                yield
            finally:
                self.in_flight -= 1
        finally:
            if self._slots is not None:
                self._slots.release()
