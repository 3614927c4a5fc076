"""The testbed benchmark: multi-step arithmetic word problems with one equation per step.

A problem starts from a value and applies 3-6 operations; the reference solution writes one
equation per step (restating the count, as a chain of thought does), steps separated by a blank
line, and ends with `The answer is N.`:

    Q: Sam has 47 coins: +38 *2 -56 +12.
    A:
    47+38=85 coins.

    85*2=170 coins.

    170-56=114 coins.

    114+12=126 coins.

    The answer is 126.

The solution is about twice its question's length over 4-7 steps, as GSM8K's chains of thought
are to theirs, so prefill and decode costs weigh as they do on real problems.

Values stay in [0, max_value]; operands of `+`/`-` are up to `max_operand`, multipliers and
divisors 2-9 (division only when exact). Difficulty knobs live in `ArithmeticTaskConfig`, read from
`dataset.testbed` in an experiment config. Problems are ordinary `pipeline.data.Problem`s, so the
shared splits and grader apply unchanged.

`grade_step` grades one step against the question, starting from the value the trajectory has
reached (right or wrong): a step is right when it is exactly the reference step from there. Step
errors are therefore local, which the `oracle` rule and the testbed report rely on.

A *misconception* is a systematic wrong rule written into a model's training labels (never into
the benchmark): `zero_borrow` subtracts digit by digit, smaller from larger, when the first
number ends in 0 (`50-27=37`), the classic borrow-across-zero error. A model trained on it makes
that error with conviction, so its own confidence does not show it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.config import ConfigError, DatasetConfig
from pipeline.problem import Problem

__all__ = [
    "MISCONCEPTIONS",
    "ArithmeticTaskConfig",
    "ArithmeticSample",
    "generate_problems",
    "generate_samples",
    "grade_step",
    "parse_question",
    "sample_problem",
]

NAMES = ("Sam", "Ana", "Lee", "Kim", "Max", "Eva", "Tom", "Ida")
ITEMS = ("coins", "beads", "stamps", "cards", "shells", "pens")
OPERATIONS = ("+", "-", "*", "/")
MISCONCEPTIONS = ("zero_borrow",)
# The question states each operation compactly ("+58", "*2"): short prompts keep training cheap.


class ArithmeticTaskConfig(BaseModel):
    """Difficulty knobs of the generator (`dataset.testbed` in a config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_problems: int = Field(5000, ge=1, description="Problems in the benchmark.")
    seed: int = Field(1234, description="Generator seed: same seed, same problems.")
    min_ops: int = Field(3, ge=1)
    max_ops: int = Field(6, ge=1)
    max_value: int = Field(
        99, ge=10, description="Every intermediate value stays in [0, max_value]."
    )
    max_operand: int = Field(99, ge=2, description="Largest operand of + and -.")
    operations: tuple[str, ...] = ("+", "-", "*")

    @field_validator("operations")
    @classmethod
    def _known_operations(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or set(value) - set(OPERATIONS):
            raise ValueError(
                f"must be a non-empty subset of {list(OPERATIONS)} (got {list(value)})"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> ArithmeticTaskConfig:
        if self.min_ops > self.max_ops:
            raise ValueError("min_ops must be <= max_ops")
        return self


@dataclass(frozen=True)
class ArithmeticSample:
    """One generated problem with its reference steps (for training and step-level grading)."""

    question: str
    steps: tuple[str, ...]  # equations, then the final "The answer is N." step
    values: tuple[int, ...]  # value after each equation
    answer: int

    @property
    def solution(self) -> str:
        return "\n\n".join(self.steps)


def _pick_operation(rng: random.Random, value: int, cfg: ArithmeticTaskConfig) -> tuple[str, int]:
    """An operation that keeps the value inside [0, max_value] (rejection sampling)."""
    for _ in range(100):
        op = rng.choice(cfg.operations)
        if op == "+":
            operand = rng.randint(2, cfg.max_operand)
            if value + operand <= cfg.max_value:
                return op, operand
        elif op == "-":
            operand = rng.randint(2, cfg.max_operand)
            if value - operand >= 0:
                return op, operand
        elif op == "*":
            operand = rng.randint(2, 9)
            if value * operand <= cfg.max_value:
                return op, operand
        else:
            divisors = [d for d in range(2, 10) if value % d == 0 and value > 0]
            if divisors:
                return op, rng.choice(divisors)
    # Always possible: value + 2 <= max_value or value - 2 >= 0 since max_value >= 10.
    return ("+", 2) if value + 2 <= cfg.max_value else ("-", 2)


def _apply(op: str, value: int, operand: int) -> int:
    if op == "+":
        return value + operand
    if op == "-":
        return value - operand
    if op == "*":
        return value * operand
    return value // operand if operand else 0


def _zero_borrow(value: int, operand: int) -> int:
    """`value - operand` digit by digit, smaller digit from larger (no borrowing)."""
    result, place = 0, 1
    while value or operand:
        result += abs(value % 10 - operand % 10) * place
        value, operand, place = value // 10, operand // 10, place * 10
    return result


def _misapply(op: str, value: int, operand: int, misconceptions: tuple[str, ...]) -> int:
    """What a model with `misconceptions` computes for one step."""
    if "zero_borrow" in misconceptions and op == "-" and value % 10 == 0 and operand % 10:
        return _zero_borrow(value, operand)
    return _apply(op, value, operand)


def step_text(value: int, op: str, operand: int, result: int, item: str) -> str:
    return f"{value}{op}{operand}={result} {item}."


def sample_problem(
    rng: random.Random, cfg: ArithmeticTaskConfig, misconceptions: tuple[str, ...] = ()
) -> ArithmeticSample:
    """One problem. With `misconceptions`, the reference steps are those of a model holding them
    (every later step continues from the value it reached); the question is the same."""
    value = rng.randint(2, cfg.max_value)
    start = value
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    clauses, steps, values = [], [], []
    for _ in range(rng.randint(cfg.min_ops, cfg.max_ops)):
        op, operand = _pick_operation(rng, value, cfg)
        result = _misapply(op, value, operand, misconceptions)
        clauses.append(f"{op}{operand}")
        steps.append(step_text(value, op, operand, result, item))
        values.append(result)
        value = result
    question = f"{name} has {start} {item}: {' '.join(clauses)}."
    steps.append(f"The answer is {value}.")
    return ArithmeticSample(question, tuple(steps), tuple(values), value)


def generate_samples(
    cfg: ArithmeticTaskConfig,
    count: int | None = None,
    seed: int | None = None,
    misconceptions: tuple[str, ...] = (),
) -> list[ArithmeticSample]:
    unknown = set(misconceptions) - set(MISCONCEPTIONS)
    if unknown:
        raise ValueError(
            f"unknown misconception(s) {sorted(unknown)}; known: {list(MISCONCEPTIONS)}"
        )
    rng = random.Random(cfg.seed if seed is None else seed)
    return [
        sample_problem(rng, cfg, misconceptions)
        for _ in range(cfg.num_problems if count is None else count)
    ]


_QUESTION = re.compile(r"has (\d+) (\w+): ((?:[+\-*/]\d+ ?)+)\.$")
_OPERATION = re.compile(r"([+\-*/])(\d+)")
_EQUATION = re.compile(r"^(\d+)[+\-*/]\d+=(-?\d+) \w+\.$")


def parse_question(question: str) -> tuple[int, str, list[tuple[str, int]]]:
    """Start value, item and operations of a testbed question."""
    match = _QUESTION.search(question.strip())
    if match is None:
        raise ValueError(f"not a testbed question: {question!r}")
    operations = [(op, int(n)) for op, n in _OPERATION.findall(match.group(3))]
    return int(match.group(1)), match.group(2), operations


def grade_step(question: str, previous_steps: list[str], step: str) -> bool:
    """Is `step` the right next step after `previous_steps` (the model's own, right or wrong)?

    An equation step is right when it is exactly the reference step from the value the
    trajectory has reached: the next operation of the question, computed correctly, the count
    restated. The final step is right when it comes after the last operation and states the
    value reached.
    """
    start, item, operations = parse_question(question)
    value = start
    for previous in previous_steps:
        match = _EQUATION.match(previous.strip())
        if match:
            value = int(match.group(2))
    index = len(previous_steps)
    text = step.strip()
    if index < len(operations):
        op, operand = operations[index]
        return text == step_text(value, op, operand, _apply(op, value, operand), item)
    return index == len(operations) and text == f"The answer is {value}."


def task_config(dataset: DatasetConfig) -> ArithmeticTaskConfig:
    try:
        return ArithmeticTaskConfig.model_validate(dataset.testbed)
    except ValidationError as exc:
        details = "; ".join(
            f"dataset.testbed{''.join(f'.{part}' for part in e['loc'][:1])}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"invalid testbed generator settings: {details}") from None


def generate_problems(dataset: DatasetConfig) -> list[Problem]:
    """The benchmark as `Problem` records (ids are stable: seed and position of generation)."""
    cfg = task_config(dataset)
    return [
        Problem(
            id=f"testbed-{cfg.seed}-{index}",
            question=sample.question,
            gold_answer=str(sample.answer),
            meta={
                "benchmark": "testbed",
                "solution": sample.solution,
                "steps": len(sample.steps) - 1,
            },
        )
        for index, sample in enumerate(generate_samples(cfg))
    ]
