"""The records of one problem's trajectory through the step loop: the `ReasoningState` the
controller advances, and a `StepRecord` per kept step.

`pipeline.controller` creates and advances them; the env, labels, evaluation and Serve read them.
They are plain data: nothing here calls an engine or a tokenizer.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from pipeline.cost import ProcessedTokens
from pipeline.data import Problem

__all__ = ["ReasoningState", "StepRecord"]


@dataclass(frozen=True)
class StepRecord:
    """One kept step of a trajectory, with what the router saw when it chose it."""

    model: str  # who wrote the kept step
    text: str
    token_ids: tuple[int, ...]
    cost: float  # everything paid for this step: draft, verification, escalation
    features: tuple[float, ...]  # the observation at the decision (the draft's features)
    score: float | None = None  # the rule's escalation score, when it has one
    draft_text: str | None = None  # the discarded draft, when the step was escalated
    mean_logprob: float = math.nan  # the kept step's mean token logprob under its writer

    @property
    def escalated(self) -> bool:
        return self.draft_text is not None


@dataclass
class ReasoningState:
    """One problem in flight: every model's context, the kept steps and what they cost."""

    problem: Problem
    contexts: dict[str, list[int]]  # per model: prompt + kept steps, as that model's token ids
    prompt_lengths: dict[str, int]
    steps: list[StepRecord] = field(default_factory=list)
    cost: float = 0.0  # under routing.cost_model
    # The trajectory's total under every cost model the ladder has inputs for (reports).
    costs: dict[str, float] = field(default_factory=dict)
    # Per model: the tokens it has processed in this trajectory (what its KV cache would hold).
    processed: dict[str, ProcessedTokens] = field(default_factory=dict)
    done: bool = False
    stop_reason: str | None = None  # answer | eos | max_steps | max_tokens
    final_answer: str | None = None
    min_draft_prob: float = 1.0  # lowest draft mean probability seen so far
    # Per model: cost paid and tokens generated, discarded drafts included.
    cost_by_model: dict[str, float] = field(default_factory=dict)
    tokens_by_model: dict[str, int] = field(default_factory=dict)
    # A request's own cap on kept tokens (Serve's max_tokens); steps are clipped to fit it.
    # None: routing.max_total_tokens, and steps are not clipped.
    token_limit: int | None = None
    # Time spent deciding (features and the rule), not waiting on engines; a batch's is shared.
    routing_seconds: float = 0.0
    # The cost when the current step began: the step's own cost is what was paid since.
    _step_start_cost: float = 0.0

    def fork(self) -> ReasoningState:
        """The trajectory so far, to be advanced separately from here on: the kept steps
        (immutable) are shared, the contexts, costs and caches copied."""
        return dataclasses.replace(
            self,
            contexts={name: list(ids) for name, ids in self.contexts.items()},
            prompt_lengths=dict(self.prompt_lengths),
            steps=list(self.steps),
            costs=dict(self.costs),
            processed={name: tokens.copy() for name, tokens in self.processed.items()},
            cost_by_model=dict(self.cost_by_model),
            tokens_by_model=dict(self.tokens_by_model),
        )

    @property
    def solution(self) -> str:
        return "".join(step.text for step in self.steps)

    @property
    def escalations(self) -> int:
        return sum(step.escalated for step in self.steps)
