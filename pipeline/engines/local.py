"""`local_engine`: the `StepEngine` for one model, in this process.

Both the Ray actors that host engines (`pipeline.engines.actor`, `serve_app.engines`) and the
in-process path of `pipeline.engines.launch` build their engine here.
"""

from __future__ import annotations

from pipeline.config import ModelConfig, PRMConfig
from pipeline.engines.types import StepEngine

__all__ = ["local_engine"]


def local_engine(model: ModelConfig) -> StepEngine:
    """The engine for `model`, in this process: vLLM, or an OpenAI-compatible endpoint; a
    process reward model (`PRMConfig`) is vLLM's pooling runner."""
    if isinstance(model, PRMConfig):
        from pipeline.engines.prm_engine import VLLMPRMEngine

        return VLLMPRMEngine(model)
    if model.engine == "openai":
        from pipeline.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(model)
    from pipeline.engines.vllm_engine import VLLMEngine

    return VLLMEngine(model)
