from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import ConfigError, DatasetConfig
from pipeline.data import split_problems
from pipeline.grading import grade
from pipeline.metrics import auroc
from pipeline.testbed.tasks import (
    ArithmeticTaskConfig,
    generate_problems,
    generate_samples,
    grade_step,
    parse_question,
)


def _dataset(**knobs) -> DatasetConfig:
    return DatasetConfig(name="testbed", testbed={"num_problems": 300, **knobs})


def test_generator_is_deterministic_per_seed() -> None:
    a = generate_problems(_dataset(seed=7))
    b = generate_problems(_dataset(seed=7))
    c = generate_problems(_dataset(seed=8))
    assert [p.question for p in a] == [p.question for p in b]
    assert [p.question for p in a] != [p.question for p in c]


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    max_value=st.integers(20, 999),
    ops=st.lists(st.sampled_from("+-*/"), min_size=1, max_size=4, unique=True),
)
def test_reference_solutions_are_valid_steps(seed: int, max_value: int, ops: list[str]) -> None:
    cfg = ArithmeticTaskConfig(
        num_problems=20, seed=seed, max_value=max_value, operations=tuple(ops)
    )
    for sample in generate_samples(cfg):
        assert cfg.min_ops <= len(sample.steps) - 1 <= cfg.max_ops
        assert all(0 <= v <= max_value for v in sample.values)
        assert sample.solution.endswith(f"The answer is {sample.answer}.")
        start, _, operations = parse_question(sample.question)
        assert len(operations) == len(sample.steps) - 1 and start >= 0
        for index, step in enumerate(sample.steps):
            assert grade_step(sample.question, list(sample.steps[:index]), step)


def test_shared_grader_grades_testbed_problems() -> None:
    for problem in generate_problems(_dataset()):
        assert grade(problem.meta["solution"], problem.gold_answer).correct
        wrong = problem.meta["solution"].replace(
            f"The answer is {problem.gold_answer}.",
            f"The answer is {int(problem.gold_answer) + 1}.",
        )
        assert not grade(wrong, problem.gold_answer).correct


def test_testbed_problems_split_like_any_benchmark() -> None:
    cfg = _dataset()
    splits = split_problems(generate_problems(cfg), cfg.splits, cfg.seed)
    assert sum(len(v) for v in splits.values()) == 300
    assert all(len(v) > 0 for v in splits.values())


def test_grade_step_flags_each_kind_of_mistake() -> None:
    question = "Sam has 40 coins: +5 *2 -9."
    assert grade_step(question, [], "40+5=45 coins.\n\n")
    assert not grade_step(question, [], "40+5=46 coins.")  # arithmetic
    assert not grade_step(question, [], "41+5=46 coins.")  # copied the wrong value
    assert not grade_step(question, [], "40*2=80 coins.")  # skipped an operation
    assert not grade_step(question, [], "40+5=45 beads.")  # restated the count wrongly
    # A step after a wrong one is judged from where the trajectory actually is.
    assert grade_step(question, ["40+5=46 coins."], "46*2=92 coins.")
    assert not grade_step(question, ["40+5=45 coins.", "45*2=90 coins."], "The answer is 81.")
    assert grade_step(
        question, ["40+5=45 coins.", "45*2=90 coins.", "90-9=81 coins."], "The answer is 81."
    )


def test_solutions_are_about_twice_as_long_as_their_questions() -> None:
    samples = generate_samples(ArithmeticTaskConfig(num_problems=500))
    question = sum(len(s.question) for s in samples)
    solution = sum(len(s.solution) for s in samples)
    assert 1.8 <= solution / question <= 3.0
    assert {len(s.steps) for s in samples} == set(range(4, 8))  # 3-6 operations + the answer


def test_the_zero_borrow_misconception_rewrites_labels_not_questions() -> None:
    cfg = ArithmeticTaskConfig(num_problems=400)
    wrong_steps = 0
    for sample in generate_samples(cfg, misconceptions=("zero_borrow",)):
        for index, step in enumerate(sample.steps[:-1]):
            if grade_step(sample.question, list(sample.steps[:index]), step):
                continue
            wrong_steps += 1
            value, rest = step.split("-", 1)  # only subtractions from a multiple of ten
            operand, result = rest.split(" ")[0].split("=")
            assert int(value) % 10 == 0 and int(operand) % 10 != 0
            digits = zip(value.zfill(3), operand.zfill(3), strict=True)
            assert int(result) == int("".join(str(abs(int(a) - int(b))) for a, b in digits))
        # Every later step continues from the value the labels reached: the answer step agrees.
        assert grade_step(sample.question, list(sample.steps[:-1]), sample.steps[-1])
    assert wrong_steps > 0
    with pytest.raises(ValueError, match="unknown misconception"):
        generate_samples(cfg, misconceptions=("carry",))


def test_bad_generator_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match="dataset.testbed.operations"):
        generate_problems(_dataset(operations=["^"]))
    with pytest.raises(ConfigError, match="dataset.testbed.nonsense"):
        generate_problems(_dataset(nonsense=1))


@settings(max_examples=100, deadline=None)
@given(
    scores=st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=40),
    data=st.data(),
)
def test_auroc_matches_pairwise_definition(scores: list[float], data) -> None:
    labels = data.draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores)))
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return
    pairs = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    assert auroc(scores, labels) == pytest.approx(pairs / (len(pos) * len(neg)))


def test_auroc_extremes() -> None:
    rng = random.Random(0)
    scores = [rng.random() for _ in range(50)]
    assert auroc(scores, [s > 0.5 for s in scores]) == 1.0
    assert auroc(scores, [s <= 0.5 for s in scores]) == 0.0
