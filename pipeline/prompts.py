"""The prompt each model sees: the problem, rendered by the model's own chat template, as token ids.

The decision problem needs steps separated by a blank line and a final answer line, so real
benchmarks add one instruction saying so; the testbed models were trained on bare questions
(their chat template renders `Q: <question>\\nA:\\n`), so they get the question alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.config import ModelConfig
from pipeline.data import Problem

__all__ = [
    "STEP_INSTRUCTION",
    "chat_context",
    "load_tokenizers",
    "prompt_content",
    "prompt_text",
    "prompt_token_ids",
    "speaks_chat",
]

STEP_INSTRUCTION = (
    "Solve the problem step by step. Separate consecutive steps with a blank line. "
    "Put the final answer within \\boxed{}."
)


def prompt_content(problem: Problem, benchmark: str) -> str:
    """The user message: the question, with the step instruction on real benchmarks."""
    if benchmark == "testbed":
        return problem.question
    return f"{problem.question}\n\n{STEP_INSTRUCTION}"


def speaks_chat(model: ModelConfig) -> bool:
    """Is `model` an endpoint reached over a chat API (it reads contexts as messages)?"""
    return model.engine == "openai" and model.endpoint.protocol == "chat"


def chat_context(problem: Problem, steps: Sequence, benchmark: str) -> tuple[str, str]:
    """A context in words, for a chat endpoint: the user message and the kept steps' text
    (`StepRequest.chat`): the same context as the prompt's token ids plus the steps'."""
    return prompt_content(problem, benchmark), "".join(step.text for step in steps)


def prompt_text(tokenizer, problem: Problem, benchmark: str) -> str:
    """The rendered prompt (chat template when the tokenizer has one)."""
    content = prompt_content(problem, benchmark)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
    return f"Question: {content}\nAnswer:\n"


def prompt_token_ids(tokenizer, problem: Problem, benchmark: str) -> list[int]:
    """Token ids of the prompt. The template already holds any special tokens it needs."""
    return tokenizer.encode(prompt_text(tokenizer, problem, benchmark), add_special_tokens=False)


def load_tokenizers(models: Sequence[ModelConfig]) -> dict[str, object]:
    """Each model's tokenizer by model name (Hugging Face `AutoTokenizer`): `tokenizer` where the
    config names one (a closed model's stand-in), else the model's own."""
    from transformers import AutoTokenizer

    return {
        m.name: AutoTokenizer.from_pretrained(
            m.tokenizer or m.path, revision=None if m.tokenizer else m.revision
        )
        for m in models
    }
