"""`InProcessLLM`: vLLM's engine core in this process, stepped by one thread, behind the same
async calls as `AsyncLLM` (many requests in flight, continuous batching, abort on cancel).

`AsyncLLM` always runs its engine core in a second process: the front end (this process) turns
the core's outputs into text and logprobs while the core schedules and runs the next forward
pass. Where the engine has cores to spare (a GPU server) that overlap is worth the process. On a
CPU machine where two engines, a driver and Ray share a few cores, each engine becomes two busy
processes, and every decode iteration also pays for serializing its outputs across the process
boundary. On the 2-core testbed machine one `LLMEngine` stepped in process did a draft call of
56 requests in ~20 % less time than `AsyncLLM` (benchmarks/RESULTS.md, "Rollout, the engine
core in process"); `VLLMEngine` uses this class on CPU by default (`ModelConfig.engine_core`).

Every call into vLLM happens on the stepping thread: callers on any event loop enqueue work and
await a future that the thread settles.

Several engines in one process (`start_engines(use_ray=False)`: `steproute evaluate --local`,
`steproute testbed report` and `train-prm`) take turns: vLLM keeps the running forward pass's
context in a module global (`vllm.forward_context`), so two engines stepping at once read each
other's attention metadata (a `KeyError` or an unset context at best, the other batch's slot
mapping at worst). `_VLLM_TURN` lets one engine at a time into vLLM; with one engine a process
(a Ray actor, a Serve replica) nobody waits on it. vLLM's shutdown of an engine (also run when
one is garbage-collected) tears down process-wide state that every engine uses (its parallel
groups), so an engine that shuts down while others of the process still run only stops stepping;
its vLLM engine is kept, and shut down with the last one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["InProcessLLM"]

# Held by whichever in-process engine of this process is inside vLLM (start-up, a step, adding or
# aborting requests): see the module's docstring.
_VLLM_TURN = threading.Lock()
_LIVE: set[InProcessLLM] = set()  # this process's engines not shut down yet (under _VLLM_TURN)
_RETIRED: list[Any] = []  # vLLM engines of those shut down before the last one (under _VLLM_TURN)


def _settle(future: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the caller cancelled it (its request is aborted)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class InProcessLLM:
    """One vLLM `LLMEngine` (engine core in this process) and the thread that steps it."""

    def __init__(self, engine_args: dict) -> None:
        from vllm import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        with _VLLM_TURN:  # start-up runs forward passes too (profiling, compilation, warm-up)
            self._engine = LLMEngine.from_engine_args(EngineArgs(**engine_args))
            _LIVE.add(self)
        self.model_config = self._engine.model_config
        self.errored = False  # the engine raised: every later call fails (see `engine_dead`)
        self._wake = threading.Condition()
        self._inbox: list[Callable[[], None]] = []  # run on the stepping thread, between steps
        # Requests whose caller awaits the final output, by request id (stepping thread only).
        self._waiting: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="vllm-step", daemon=True)
        self._thread.start()

    # ---- callers (any thread, any event loop) ----------------------------------------------

    async def generate(self, prompt: dict, params, request_id: str):
        """Yields the request's final `RequestOutput` (the step engine asks for `FINAL_ONLY`);
        cancelling the awaiting task aborts the request in the engine."""
        (output,) = await self.generate_all([prompt], [params], [request_id])
        yield output

    async def generate_all(self, prompts: list[dict], params: list, request_ids: list[str]):
        """The final `RequestOutput` of each request. All of them join the engine before its
        next step, so a call's requests start in one batch (their prefills in one forward pass)
        instead of trickling in while the first ones run. Cancelling aborts those unfinished."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in request_ids]

        def add() -> None:
            for args in zip(request_ids, prompts, params, futures, strict=True):
                self._add(*args, loop)

        self._submit(add)
        try:
            return await asyncio.gather(*futures)
        except asyncio.CancelledError:
            self._submit(lambda: [self._abort(request_id) for request_id in request_ids])
            raise

    async def reset_prefix_cache(self) -> bool:
        return await self.call(lambda engine: engine.reset_prefix_cache())

    async def call(self, method: Callable[[Any], Any]) -> Any:
        """`method(engine)` on the stepping thread, between two steps (e.g. a prefix-cache reset)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def run() -> None:
            try:
                result, error = method(self._engine), None
            except Exception as exc:  # handed to the caller
                result, error = None, exc
            self._reply(loop, future, result, error)

        self._submit(run)
        return await future

    def get_tokenizer(self):
        return self._engine.get_tokenizer()

    def get_num_unfinished_requests(self) -> int:
        """Requests whose callers still wait (an aborted one leaves at the next step)."""
        return len(self._waiting)

    def shutdown(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=30)
        with _VLLM_TURN:  # see the module's docstring
            _LIVE.discard(self)
            _RETIRED.append(self._engine)
            if not _LIVE:
                for engine in _RETIRED:
                    engine.engine_core.shutdown()
                _RETIRED.clear()

    # ---- the stepping thread ---------------------------------------------------------------

    def _submit(self, work: Callable[[], None]) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        if self._closed:
            raise EngineDeadError()
        with self._wake:
            self._inbox.append(work)
            self._wake.notify()

    @staticmethod
    def _reply(loop, future, result=None, error: BaseException | None = None) -> None:
        try:
            loop.call_soon_threadsafe(_settle, future, result, error)
        except RuntimeError:  # the caller's event loop has closed: nobody waits any more
            pass

    def _add(self, request_id: str, prompt: dict, params, future, loop) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        if self.errored or self._closed:
            self._reply(loop, future, error=EngineDeadError())
            return
        try:
            self._engine.add_request(request_id, prompt, params)
        except Exception as exc:  # a bad request fails its caller only
            self._reply(loop, future, error=exc)
            return
        self._waiting[request_id] = (loop, future)

    def _abort(self, request_id: str) -> None:
        if self._waiting.pop(request_id, None) is not None and not self.errored:
            self._engine.abort_request([request_id])

    def _busy(self) -> bool:
        return not self.errored and self._engine.has_unfinished_requests()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._inbox or self._closed or self._busy()):
                    self._wake.wait()
                work, self._inbox = self._inbox, []
                closed = self._closed
            with _VLLM_TURN:
                for item in work:  # after a failure or a shutdown, requests fail at once
                    item()
                if closed:
                    break
                if not self._busy():
                    continue
                try:
                    outputs = self._engine.step()
                except Exception as exc:
                    self._fail(exc)
                    continue
            for output in outputs:
                if output.finished and (waiting := self._waiting.pop(output.request_id, None)):
                    self._reply(*waiting, output)
        self._fail_waiting(RuntimeError("the engine was shut down"))

    def _fail(self, exc: Exception) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        log.error("vLLM engine step failed: %r", exc, exc_info=exc)
        self.errored = True
        dead = EngineDeadError()
        dead.__cause__ = exc
        self._fail_waiting(dead)

    def _fail_waiting(self, error: BaseException) -> None:
        waiting, self._waiting = self._waiting, {}
        for loop, future in waiting.values():
            self._reply(loop, future, error=error)
