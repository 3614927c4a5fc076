"""Measure the testbed's routing signal on real vLLM: accuracy per model and step-error AUROC.

Each model solves held-out problems alone, one step at a time (greedy, `stop=["\\n\\n"]`,
logprobs on), through the same controller the router uses (rules `small_only`, `large_only`). Every generated step is graded against the
problem's operations (`grade_step`), which gives step-level labels; the AUROC of "minus the mean
token logprob of the step" for "this step is wrong" says how much of the small model's error is
visible in its own confidence. All numbers are TESTBED numbers.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from pipeline.config import ExperimentConfig
from pipeline.controller import Controller, ReasoningState
from pipeline.data import Problem
from pipeline.rules import make_rule

log = logging.getLogger(__name__)

__all__ = ["ModelReport", "auroc", "grade_step", "measure", "parse_question"]

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
class ModelReport:
    name: str
    problems: int
    accuracy: float
    step_accuracy: float
    step_error_auroc: float
    steps: int


def _model_report(name: str, states: list[ReasoningState], controller: Controller) -> ModelReport:
    correct, scores, wrong = 0, [], []
    for state in states:
        correct += controller.is_correct(state)
        texts = [step.text for step in state.steps]
        for index, step in enumerate(state.steps):
            wrong.append(not grade_step(state.problem.question, texts[:index], step.text))
            scores.append(-step.mean_logprob)
    return ModelReport(
        name=name,
        problems=len(states),
        accuracy=correct / len(states),
        step_accuracy=1 - sum(wrong) / len(wrong),
        step_error_auroc=auroc(scores, wrong),
        steps=len(wrong),
    )


async def measure(
    cfg: ExperimentConfig, problems: list[Problem], engines: dict | None = None
) -> dict[str, ModelReport]:
    """Each end of the ladder solves `problems` alone, through the shared controller
    (`small_only` and `large_only`), so these are the numbers the evaluation harness reproduces.
    Engines are started in this process unless given."""
    from pipeline.engines.launch import shutdown_engines, start_engines

    own = engines is None
    engines = engines or start_engines(cfg.models, use_ray=False)
    try:
        controller = Controller(cfg, engines)
        reports = {}
        for rule, model in (("small_only", cfg.models[0]), ("large_only", cfg.models[-1])):
            states = await controller.run(problems, make_rule(rule), concurrency=256)
            reports[model.name] = _model_report(model.name, states, controller)
        return reports
    finally:
        if own:
            await shutdown_engines(engines)
