"""`VLLMPRMEngine`: a process reward model in this process, answering the engine interface.

vLLM serves a PRM such as Qwen2.5-Math-PRM (`Qwen2ForProcessRewardModel`) with its pooling
runner: STEP pooling returns, at every occurrence of the step tag in the prompt, the softmax
over (step wrong, step right). A `StepRequest` to this engine asks "is the prompt's last step
right?": the answer is a `StepResult` that generated nothing and carries `step_score`, p(right)
at the last step tag. Speaking `StepEngine` lets the PRM ride the same Ray actors, step cache
and cost accounting as the generators.
"""

from __future__ import annotations

import asyncio
import itertools

from pipeline.config import PRMConfig
from pipeline.engines.types import StepRequest, StepResult, model_fingerprint
from pipeline.engines.vllm_engine import configure_cpu_environment, engine_kwargs

__all__ = ["VLLMPRMEngine"]

_request_ids = itertools.count()


class VLLMPRMEngine:
    def __init__(self, model: PRMConfig) -> None:
        configure_cpu_environment()
        from vllm import AsyncEngineArgs
        from vllm.config import PoolerConfig
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            **engine_kwargs(model),
            runner="pooling",
            pooler_config=PoolerConfig(step_tag_id=model.step_tag_id),
        )
        self._engine = AsyncLLM.from_engine_args(args)
        self.max_model_len = self._engine.model_config.max_model_len
        self.fingerprint = model_fingerprint(model.path, model.revision, model.dtype)
        self.name = model.name
        self.step_tag_id = model.step_tag_id

    async def generate(self, request: StepRequest) -> StepResult:
        """Score the last step of `request.prompt_token_ids` (which must end at a step tag)."""
        from vllm import PoolingParams

        ids = list(request.prompt_token_ids)[-self.max_model_len :]
        if self.step_tag_id not in ids:
            raise ValueError(
                f"PRM '{self.name}': the prompt holds no step tag (token {self.step_tag_id}); "
                "the caller appends it after the draft"
            )
        final = None
        async for output in self._engine.encode(
            {"prompt_token_ids": ids},
            PoolingParams(task="token_classify"),
            request_id=f"prm-{next(_request_ids)}",
        ):
            final = output
        assert final is not None, "vLLM returned no pooling output"
        rows = final.outputs.data  # (step tags in the prompt, 2): p(wrong), p(right)
        return StepResult(
            token_ids=(),
            text="",
            token_logprobs=(),
            finish_reason="score",
            prompt_tokens=len(ids),
            cached_prompt_tokens=final.num_cached_tokens or 0,
            step_score=float(rows[-1, 1]),
        )

    async def generate_batch(self, requests: list[StepRequest]) -> list[StepResult]:
        return list(await asyncio.gather(*(self.generate(r) for r in requests)))

    async def reset_prefix_cache(self) -> None:
        await self._engine.reset_prefix_cache()

    async def close(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
