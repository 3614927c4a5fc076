"""Measure the testbed's routing signal on real vLLM: accuracy per model and step-error AUROC.

Each model solves held-out problems alone, one step at a time (greedy, `stop=["\\n\\n"]`,
logprobs on), exactly as the router will drive it. Every generated step is graded against the
problem's operations (`grade_step`), which gives step-level labels; the AUROC of "minus the mean
token logprob of the step" for "this step is wrong" says how much of the small model's error is
visible in its own confidence. All numbers are TESTBED numbers.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from pipeline.config import ExperimentConfig, ModelConfig
from pipeline.data import Problem
from pipeline.grading import grade
from pipeline.testbed.tokenizer import PROMPT_FORMAT

log = logging.getLogger(__name__)

__all__ = ["ModelReport", "auroc", "grade_step", "parse_question", "run_model", "stepwise_solve"]

_START = re.compile(r"has (\d+) \w+, then ")
_OPERATION = re.compile(r"([+\-*/])(\d+)")
_EQUATION = re.compile(r"^(\d+)([+\-*/])(\d+)=(-?\d+)$")
_FINAL = re.compile(r"^The answer is (-?\d+)\.$")


def parse_question(question: str) -> tuple[int, list[tuple[str, int]]]:
    """Start value and operations of a testbed question."""
    start = _START.search(question)
    if start is None:
        raise ValueError(f"not a testbed question: {question!r}")
    tail = question[start.end() :].split(".")[0]
    return int(start.group(1)), [(op, int(n)) for op, n in _OPERATION.findall(tail)]


def _apply(op: str, a: int, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]


def grade_step(question: str, previous_steps: list[str], step: str) -> bool:
    """Is `step` the right next step after `previous_steps` (the model's own, right or wrong)?

    An equation is right when it starts from the value the trajectory has reached, applies the
    next operation of the question, and computes it correctly. The final step is right when it
    comes after the last operation and states the value reached.
    """
    start, operations = parse_question(question)
    value = start
    for previous in previous_steps:
        match = _EQUATION.match(previous.strip())
        if match:
            value = int(match.group(4))
    index = len(previous_steps)
    text = step.strip()
    if index < len(operations):
        match = _EQUATION.match(text)
        if not match:
            return False
        a, op, b, c = int(match.group(1)), match.group(2), int(match.group(3)), int(match.group(4))
        return (a, op, b) == (value, *operations[index]) and c == _apply(op, a, b)
    final = _FINAL.match(text)
    return bool(final) and index == len(operations) and int(final.group(1)) == value


def auroc(scores: list[float], labels: list[bool]) -> float:
    """Area under the ROC curve of `scores` for the positive `labels` (ties count half)."""
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not positives or not negatives:
        return float("nan")
    ranked = sorted([(s, 1) for s in positives] + [(s, 0) for s in negatives])
    # Mann-Whitney U with average ranks for ties.
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        average_rank = (i + j + 1) / 2  # ranks are 1-based
        rank_sum += average_rank * sum(label for _, label in ranked[i:j])
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@dataclass
class Trajectory:
    problem: Problem
    steps: list[str] = field(default_factory=list)
    step_mean_logprobs: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    done: bool = False


def _engine(model: ModelConfig):
    from pipeline.engines.vllm_engine import configure_cpu_environment, engine_kwargs

    configure_cpu_environment()
    from vllm import LLM  # lazy: only code that generates imports vLLM

    return LLM(**engine_kwargs(model))


def stepwise_solve(
    llm, problems: list[Problem], max_steps: int, max_step_tokens: int
) -> list[Trajectory]:
    """Solve every problem with one model, one batched vLLM call per step."""
    from vllm import SamplingParams

    tokenizer = llm.get_tokenizer()
    params = SamplingParams(
        temperature=0.0,
        max_tokens=max_step_tokens,
        stop=["\n\n"],
        include_stop_str_in_output=True,
        logprobs=1,
    )
    trajectories = [
        Trajectory(p, token_ids=tokenizer.encode(PROMPT_FORMAT.format(question=p.question)))
        for p in problems
    ]
    for _ in range(max_steps):
        active = [t for t in trajectories if not t.done]
        if not active:
            break
        outputs = llm.generate(
            [{"prompt_token_ids": t.token_ids} for t in active], params, use_tqdm=False
        )
        for trajectory, output in zip(active, outputs, strict=True):
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            chosen = [lp[tid].logprob for tid, lp in zip(ids, completion.logprobs, strict=True)]
            trajectory.token_ids.extend(ids)  # token ids, never re-tokenized text
            trajectory.steps.append(completion.text)
            trajectory.step_mean_logprobs.append(sum(chosen) / max(1, len(chosen)))
            # A step that did not end on the separator ended the solution (eos or the token cap).
            if completion.stop_reason != "\n\n" or "The answer is" in completion.text:
                trajectory.done = True
    return trajectories


@dataclass
class ModelReport:
    name: str
    problems: int
    accuracy: float
    step_accuracy: float
    step_error_auroc: float
    steps: int


def run_model(cfg: ExperimentConfig, model: ModelConfig, problems: list[Problem]) -> ModelReport:
    llm = _engine(model)
    try:
        trajectories = stepwise_solve(
            llm, problems, cfg.routing.max_steps, model.sampling.max_step_tokens
        )
    finally:
        del llm
    correct, scores, wrong = 0, [], []
    for t in trajectories:
        correct += grade("".join(t.steps), t.problem.gold_answer, "testbed").correct
        for index, step in enumerate(t.steps):
            wrong.append(not grade_step(t.problem.question, t.steps[:index], step))
            scores.append(-t.step_mean_logprobs[index])
    return ModelReport(
        name=model.name,
        problems=len(problems),
        accuracy=correct / len(problems),
        step_accuracy=1 - sum(wrong) / len(wrong),
        step_error_auroc=auroc(scores, wrong),
        steps=len(wrong),
    )
