from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.engines.types import StepResult
from pipeline.features import (
    FEATURE_NAMES,
    NUM_FEATURES,
    TrajectoryStats,
    arithmetic_error,
    draft_stats,
    draft_stats_batch,
    feature_vector,
    text_embedding,
    text_embeddings,
    top_k_entropies,
    top_k_entropy,
)

logprob = st.floats(-30, 0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    chosen=st.lists(logprob, max_size=40),
    k=st.integers(1, 5),
    step=st.integers(0, 30),
    max_steps=st.integers(1, 30),
    cost=st.floats(0, 1e12, allow_nan=False),
    scale=st.floats(0, 1e12, allow_nan=False),
    escalated=st.integers(0, 30),
    prev=st.booleans(),
    text=st.text(max_size=30),
    prompt=st.integers(0, 5000),
    prompt_scale=st.integers(0, 2048),
)
def test_every_feature_is_in_unit_interval(
    chosen, k, step, max_steps, cost, scale, escalated, prev, text, prompt, prompt_scale
):
    top = [[lp - i for i in range(k)] for lp in chosen]
    draft = draft_stats(chosen, top, text, max_step_tokens=32)
    traj = TrajectoryStats(
        step, max_steps, cost, scale, min(escalated, step), 0.5, prev, prompt, prompt_scale
    )
    vector = feature_vector(draft, traj)
    assert len(vector) == NUM_FEATURES
    assert all(0.0 <= v <= 1.0 and math.isfinite(v) for v in vector)


def test_prompt_length_feature_grows_with_the_question_and_saturates() -> None:
    draft = draft_stats([-0.1], [[-0.1]], "2+2=4", 32)
    column = FEATURE_NAMES.index("traj/prompt_length")

    def value(tokens: int) -> float:
        return feature_vector(draft, TrajectoryStats(0, 10, 0.0, 1.0, 0, 1.0, False, tokens, 64))[
            column
        ]

    assert value(44) < value(55) < value(63) < 1.0
    assert value(64) == value(500) == 1.0


def test_confident_draft_scores_higher_than_unsure_one() -> None:
    sure = draft_stats([-0.01, -0.02], [[-0.01, -5.0], [-0.02, -6.0]], "1+1=2", 32)
    unsure = draft_stats([-0.01, -1.5], [[-0.01, -5.0], [-0.3, -1.4]], "1+1=3", 32)
    assert sure.mean_prob > unsure.mean_prob and sure.min_prob > unsure.min_prob
    assert sure.mean_entropy < unsure.mean_entropy


@settings(max_examples=200, deadline=None)
@given(
    top=st.lists(st.one_of(logprob, st.just(-math.inf)), max_size=20),
    k=st.integers(2, 20),
    level=logprob,
)
def test_top_k_entropy_is_0_when_sure_1_when_flat_and_in_between(top, k, level) -> None:
    assert 0.0 <= top_k_entropy(top) <= 1.0
    assert top_k_entropy([level] + [-math.inf] * (k - 1)) == 0.0  # one-hot top-k
    assert top_k_entropy([level] + [level - 800.0] * (k - 1)) == 0.0  # the rest underflow
    assert top_k_entropy([level] * k) == pytest.approx(1.0)  # uniform top-k


def _entropy_by_definition(top: list[float]) -> float:
    """`top_k_entropy` as its docstring defines it, written plainly (the reference)."""
    finite = [lp for lp in top if math.isfinite(lp)]
    if len(finite) < 2:
        return 0.0
    weights = [math.exp(lp - max(finite)) for lp in finite]
    probs = [w / sum(weights) for w in weights]
    return min(1.0, -sum(p * math.log(p) for p in probs if p > 0) / math.log(len(finite)))


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.one_of(logprob, st.just(-math.inf), st.just(math.nan), st.just(-900.0))),
        max_size=12,
    )
)
def test_top_k_entropies_of_ragged_rows_match_the_definition(rows) -> None:
    entropies = top_k_entropies(rows)
    assert entropies.shape == (len(rows),)
    for row, value in zip(rows, entropies, strict=True):
        assert value == pytest.approx(_entropy_by_definition(row), abs=1e-12)
        assert value == top_k_entropy(row)


def test_a_batch_of_drafts_has_each_drafts_own_stats() -> None:
    def draft(text: str, top: list[list[float]]) -> StepResult:
        chosen = tuple(row[0] if row else -0.5 for row in top)
        return StepResult((), text, chosen, tuple(map(tuple, top)), "stop", 3, 0)

    drafts = [
        draft("1+1=2", [[-0.01, -5.0], [-0.7, -0.7, -3.0], [-0.1]]),
        draft("", []),
        draft("The answer is 4.", [[-2.0, -2.1, -math.inf, -2.2, -9.0]]),
        draft("2*3=7", [[-0.3, -1.4], [-0.2, math.nan]]),
    ]
    batch = draft_stats_batch(drafts, 32)
    assert batch == [draft_stats(d.token_logprobs, d.top_logprobs, d.text, 32) for d in drafts]
    assert draft_stats_batch([], 32) == []
    texts = [d.text for d in drafts]
    assert text_embeddings(texts, 16).tolist() == [text_embedding(t, 16) for t in texts]


def test_first_token_entropy_is_the_first_tokens_top_k_entropy() -> None:
    top = [[-0.01, -5.0], [-0.7, -0.7], [-0.1, -2.5]]
    draft = draft_stats([-0.01, -0.7, -0.1], top, "1+1=2", 32)
    assert draft.first_token_entropy == top_k_entropy(top[0])
    assert draft.first_token_entropy < draft.mean_entropy  # the flat second token adds the rest
    assert draft_stats([], [], "", 32).first_token_entropy == 0.0


def test_final_answer_flag() -> None:
    assert draft_stats([-0.1], [[-0.1]], "The answer is 4.", 32).has_final_answer == 1.0
    assert draft_stats([-0.1], [[-0.1]], "2+2=4", 32).has_final_answer == 0.0


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=60), dim=st.integers(1, 64))
def test_draft_text_embedding_is_deterministic_and_in_unit_interval(text, dim) -> None:
    vector = text_embedding(text, dim)
    assert len(vector) == dim and vector == text_embedding(text, dim)
    assert all(0.0 <= v <= 1.0 for v in vector)


def _embedding_by_definition(text: str, dim: int) -> list[float]:
    """`text_embedding` as its docstring defines it, written plainly: signed hashes of the
    character trigrams, L2-normalized, mapped to [0, 1]."""
    import hashlib

    vector = [0.0] * dim
    padded = f"  {text} "
    for i in range(len(padded) - 2):
        digest = hashlib.blake2b(padded[i : i + 3].encode(), digest_size=8).digest()
        bucket = int.from_bytes(digest[:4], "little") % dim
        vector[bucket] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [(v / norm + 1.0) / 2.0 for v in vector]


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet="0123456789+-*/=.,$ \nThe answers", max_size=300), dim=st.integers(1, 300)
)
def test_draft_text_embedding_is_its_definition_to_the_last_bit(text, dim) -> None:
    """Trained policies read these floats: the fast implementation (cached trigram hashes,
    numpy) must give exactly the floats of the definition."""
    assert text_embedding(text, dim) == _embedding_by_definition(text, dim)


def test_draft_text_embedding_separates_different_steps() -> None:
    assert text_embedding("47+38=85\n\n", 16) != text_embedding("The answer is 12.", 16)
    assert text_embedding("anything", 0) == []


OPERATORS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@settings(max_examples=300, deadline=None)
@given(
    a=st.integers(0, 99_999),
    b=st.integers(1, 9_999),
    op=st.sampled_from(["+", "-", "*", "/"]),
    off=st.integers(-1000, 1000).filter(bool),
    style=st.sampled_from(["{a}{op}{b}={r} coins.", "So $%s %s %s = $%s.", "{a} {op} {b} = {r}"]),
)
def test_arithmetic_error_flags_exactly_the_wrong_results(a, b, op, off, style) -> None:
    """A right equation reads 0 and the same equation with its result off reads 1, whatever the
    numbers and however the text writes them (thousands separators, dollars, ×/÷)."""
    right = round(a / b, 2) if op == "/" else OPERATORS[op](a, b)

    def text(result) -> str:
        if style.startswith("So"):
            shown = {"*": "×", "/": "÷"}.get(op, op)
            return style % (f"{a:,}", shown, f"{b:,}", f"{result:,}")
        return style.format(a=a, op=op, b=b, r=result)

    assert arithmetic_error(text(right)) == 0.0
    assert arithmetic_error(text(right + off)) == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 126.",
        "20% of 50 = 10 apples.",  # the left side is not a calculation
        "She is 5-year-old; 3 = three.",
        "10/3 = 3.33 each",  # written to two decimals
        "Divide: 7/0=1",  # not arithmetic a calculator answers
        "1" * 400 + "+1=2",  # beyond a float
        "2**10=3",  # only + - * / are read
        "",
    ],
)
def test_arithmetic_error_leaves_text_it_cannot_check_alone(text) -> None:
    assert arithmetic_error(text) == 0.0


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="0123456789+-*/=().,$x× abc", max_size=40))
def test_arithmetic_error_reads_any_text(text) -> None:
    assert arithmetic_error(text) in (0.0, 1.0)


def test_arithmetic_error_is_a_feature_of_the_draft_and_agrees_with_the_testbed() -> None:
    """The testbed's reference steps read 0, the misconception's steps (`90-74=24`) read 1; the
    value lands in the feature vector's `draft/arithmetic_error` column."""
    from pipeline.testbed.tasks import ArithmeticTaskConfig, generate_samples

    cfg = ArithmeticTaskConfig(num_problems=200, seed=3)
    right = generate_samples(cfg)
    held = generate_samples(cfg, misconceptions=("zero_borrow",))
    column = FEATURE_NAMES.index("draft/arithmetic_error")
    trajectory = TrajectoryStats(0, 10, 0.0, 1.0, 0, 1.0, False)
    differing = 0
    for good, bad in zip(right, held, strict=True):
        assert all(arithmetic_error(step) == 0.0 for step in good.steps)
        if good.question != bad.question:
            continue  # the generators' draws parted after an earlier misconception step
        for good_step, bad_step in zip(good.steps, bad.steps, strict=False):
            if good_step != bad_step:
                assert bad_step.split("=")[0] == good_step.split("=")[0]  # same calculation
                differing += 1
                vector = feature_vector(draft_stats([-0.1], [[-0.1]], bad_step, 32), trajectory)
                assert vector[column] == 1.0
                break
    assert differing > 5
