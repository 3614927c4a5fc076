"""Step engines: token ids in, one reasoning step (token ids + logprobs) out.

`StepRequest -> StepResult` is the one interface every generator speaks: `VLLMEngine` (vLLM, GPU
or CPU) and `OpenAIEngine` (any OpenAI-compatible server). `EngineActor`
hosts one engine as a named async Ray actor. vLLM-backed classes are imported lazily, so code
that needs no engine never imports vllm.
"""

from __future__ import annotations

from pipeline.engines.types import StepEngine, StepRequest, StepResult

__all__ = ["EngineActor", "StepEngine", "StepRequest", "StepResult", "VLLMEngine"]


def __getattr__(name: str):
    if name == "VLLMEngine":
        from pipeline.engines.vllm_engine import VLLMEngine

        return VLLMEngine
    if name == "EngineActor":
        from pipeline.engines.actor import EngineActor

        return EngineActor
    raise AttributeError(name)
