from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.features import (
    FEATURE_NAMES,
    NUM_FEATURES,
    TrajectoryStats,
    draft_stats,
    feature_vector,
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
    from pipeline.features import text_embedding

    vector = text_embedding(text, dim)
    assert len(vector) == dim and vector == text_embedding(text, dim)
    assert all(0.0 <= v <= 1.0 for v in vector)


def test_draft_text_embedding_separates_different_steps() -> None:
    from pipeline.features import text_embedding

    assert text_embedding("47+38=85\n\n", 16) != text_embedding("The answer is 12.", 16)
    assert text_embedding("anything", 0) == []
