"""The testbed benchmark: multi-step arithmetic word problems with one equation per step.

A problem starts from a value and applies 2-6 operations; the reference solution writes one
equation per step, steps separated by a blank line, and ends with `The answer is N.`:

    Q: Sam has 347 coins, then +58 *2 -129. How many?
    A:
    347+58=405

    405*2=810

    810-129=681

    The answer is 681.

Values stay in [0, max_value]; operands of `+`/`-` are up to `max_operand`, multipliers and
divisors 2-9 (division only when exact). Difficulty knobs live in `ArithmeticTaskConfig`, read from
`dataset.testbed` in an experiment config. Problems are ordinary `pipeline.data.Problem`s, so the
shared splits and grader apply unchanged.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.config import ConfigError, DatasetConfig
from pipeline.data import Problem

__all__ = [
    "ArithmeticTaskConfig",
    "ArithmeticSample",
    "generate_problems",
    "generate_samples",
    "sample_problem",
]

NAMES = ("Sam", "Ana", "Lee", "Kim", "Max", "Eva", "Tom", "Ida")
ITEMS = ("coins", "beads", "stamps", "cards", "shells", "pens")
OPERATIONS = ("+", "-", "*", "/")
# The question states each operation compactly ("+58", "*2"): short prompts keep training cheap.


class ArithmeticTaskConfig(BaseModel):
    """Difficulty knobs of the generator (`dataset.testbed` in a config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_problems: int = Field(5000, ge=1, description="Problems in the benchmark.")
    seed: int = Field(1234, description="Generator seed: same seed, same problems.")
    min_ops: int = Field(2, ge=1)
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
    return value // operand


def sample_problem(rng: random.Random, cfg: ArithmeticTaskConfig) -> ArithmeticSample:
    value = rng.randint(2, cfg.max_value)
    start = value
    clauses, steps, values = [], [], []
    for _ in range(rng.randint(cfg.min_ops, cfg.max_ops)):
        op, operand = _pick_operation(rng, value, cfg)
        result = _apply(op, value, operand)
        clauses.append(f"{op}{operand}")
        steps.append(f"{value}{op}{operand}={result}")
        values.append(result)
        value = result
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    question = f"{name} has {start} {item}, then {' '.join(clauses)}. How many?"
    steps.append(f"The answer is {value}.")
    return ArithmeticSample(question, tuple(steps), tuple(values), value)


def generate_samples(
    cfg: ArithmeticTaskConfig, count: int | None = None, seed: int | None = None
) -> list[ArithmeticSample]:
    rng = random.Random(cfg.seed if seed is None else seed)
    return [sample_problem(rng, cfg) for _ in range(cfg.num_problems if count is None else count)]


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
