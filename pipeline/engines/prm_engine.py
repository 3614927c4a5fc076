"""`VLLMPRMEngine`: a process reward model in this process, answering the engine interface.

vLLM serves a PRM such as Qwen2.5-Math-PRM (`Qwen2ForProcessRewardModel`) with its pooling
runner: STEP pooling returns, at every occurrence of the step tag in the prompt, the softmax
over (step wrong, step right). A `StepRequest` to this engine asks "is the prompt's last step
right?": the answer is a `StepResult` that generated nothing and carries `step_score`, p(right)
at the last step tag. Speaking `StepEngine` lets the PRM ride the same Ray actors, step cache
and cost accounting as the generators.
"""

from __future__ import annotations

import itertools

from pipeline.config import PRMConfig
from pipeline.engines.types import StepRequest, StepResult
from pipeline.engines.vllm_engine import VLLMEngine, engine_kwargs

__all__ = ["VLLMPRMEngine"]

_request_ids = itertools.count()


class VLLMPRMEngine(VLLMEngine):
    """`VLLMEngine` with vLLM's pooling runner: `generate` scores instead of generating;
    batching, prefix-cache reset and close are the generator's."""

    def __init__(self, model: PRMConfig) -> None:
        super().__init__(model)
        self.step_tag_id = model.step_tag_id

    def _core_in_process(self, model: PRMConfig) -> bool:
        return False  # vLLM's pooling runner behind `AsyncLLM.encode` (an engine of its own)

    def _engine_args(self, model: PRMConfig) -> dict:
        from vllm.config import PoolerConfig

        pooling = PoolerConfig(step_tag_id=model.step_tag_id)
        return engine_kwargs(model) | {"runner": "pooling", "pooler_config": pooling}

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
