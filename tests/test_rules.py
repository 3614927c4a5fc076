"""Routing rules: the registry, thresholds, the random rule's rate, policies."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.features import FEATURE_NAMES, NUM_FEATURES, Observation
from pipeline.policy import RouterPolicy
from pipeline.rules import NEVER, RULES, RoutingRule, make_rule, register


def _obs(
    n: int, mean_prob: float | np.ndarray = 0.9, verifier=None, first_entropy=None
) -> Observation:
    features = np.full((n, NUM_FEATURES), 0.5, dtype=np.float32)
    features[:, FEATURE_NAMES.index("draft/mean_prob")] = mean_prob
    return Observation(
        features=features,
        problem_ids=tuple(f"p{i}" for i in range(n)),
        step_indices=(0,) * n,
        verifier_mean_logprob=verifier,
        first_token_entropy=first_entropy,
    )


def test_registry_refuses_a_duplicate_name() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register("small_only")(type("Again", (RoutingRule,), {}))


def test_unknown_rule_error_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: .*confidence_threshold"):
        make_rule("bogus")


def test_every_threshold_rule_runs_from_never_to_always() -> None:
    obs = _obs(
        50,
        np.linspace(0.01, 0.99, 50),
        verifier=np.linspace(-3, 0, 50),
        first_entropy=np.linspace(0, 1, 50),
    )
    rules = (
        "random",
        "confidence_threshold",
        "calculator_confidence",
        "large_likelihood",
        "first_token_entropy",
        "policy",
    )
    for name in rules:
        rule = make_rule(name)
        assert rule.with_threshold(NEVER).decide(obs).sum() == 0, name
        assert (rule.with_threshold(0.0).decide(obs) == 1).all(), name


def test_confidence_threshold_escalates_the_unsure_drafts() -> None:
    rule = make_rule("confidence_threshold", threshold=0.2)  # escalate when mean prob < 0.8
    actions = rule.decide(_obs(3, np.array([0.95, 0.85, 0.5])))
    assert actions.tolist() == [0, 0, 1]


def test_calculator_confidence_escalates_contradicted_drafts_first_then_the_unsure() -> None:
    obs = _obs(4, np.array([0.99, 0.5, 0.9, 0.3]))
    obs.features[:, FEATURE_NAMES.index("draft/arithmetic_error")] = [1.0, 0.0, 1.0, 0.0]
    scores = make_rule("calculator_confidence").scores(obs)
    assert np.argsort(-scores).tolist() == [2, 0, 3, 1]  # sure but wrong sums before unsure
    assert ((0.0 <= scores) & (scores <= 1.0)).all()


def test_random_rule_escalates_about_p_and_repeats_itself() -> None:
    obs = Observation(
        np.zeros((4000, NUM_FEATURES), dtype=np.float32),
        tuple(f"p{i // 5}" for i in range(4000)),
        tuple(i % 5 for i in range(4000)),
    )
    rule = make_rule("random", p=0.3, seed=7)
    first = rule.decide(obs)
    assert abs(first.mean() - 0.3) < 0.03
    assert (make_rule("random", p=0.3, seed=7).decide(obs) == first).all()
    assert (make_rule("random", p=0.3, seed=8).decide(obs) != first).any()


def test_large_likelihood_needs_the_verifier_scores() -> None:
    with pytest.raises(ValueError, match="verifier"):
        make_rule("large_likelihood").decide(_obs(2))


def test_first_token_entropy_escalates_the_drafts_that_start_unsure() -> None:
    entropies = np.array([0.4, 0.05, 0.9, 0.0, 0.6])
    obs = _obs(5, first_entropy=entropies)
    rule = make_rule("first_token_entropy")
    scores = rule.scores(obs)
    np.testing.assert_array_equal(np.argsort(scores), np.argsort(entropies))
    assert (rule.with_threshold(0.0).decide(obs) == 1).all()
    assert rule.with_threshold(1.01).decide(obs).sum() == 0
    assert rule.with_threshold(0.5).decide(obs).tolist() == [0, 0, 1, 0, 1]


def test_first_token_entropy_needs_the_entropies_in_the_observation() -> None:
    with pytest.raises(ValueError, match="first-token entropy"):
        make_rule("first_token_entropy").decide(_obs(2))


def test_policy_rule_round_trips_a_saved_policy(tmp_path) -> None:
    policy = RouterPolicy(hidden_sizes=(8,))
    policy.save(tmp_path / "p")
    obs = _obs(6, np.linspace(0.1, 0.9, 6))
    direct = make_rule("policy", policy=policy, threshold=0.5).scores(obs)
    loaded = make_rule("policy", policy=str(tmp_path / "p"), threshold=0.5).scores(obs)
    np.testing.assert_allclose(direct, loaded, rtol=1e-6)


def test_loading_a_folder_without_a_policy_says_what_is_missing(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="policy.json"):
        RouterPolicy.load(tmp_path)


def test_hand_set_policy_escalates_low_confidence_more() -> None:
    probs = RouterPolicy.hand_set().escalation_probability(_obs(2, np.array([0.99, 0.3])).features)
    assert probs[1] > 0.9 and probs[1] > probs[0] + 0.3


def test_registry_holds_every_documented_rule() -> None:
    assert {
        "small_only",
        "large_only",
        "random",
        "confidence_threshold",
        "large_likelihood",
        "first_token_entropy",
        "prm_threshold",
        "policy",
    } <= set(RULES)


def test_oracle_escalates_exactly_the_wrong_drafts_in_its_share_of_problems() -> None:
    question = "Sam has 40 coins: +5 *2."
    drafts = ["40+5=45 coins.\n\n", "40+5=46 coins.\n\n", "45*2=90 coins.\n\n", "45*2=91 coins."]
    previous = [(), (), ("40+5=45 coins.",), ("40+5=45 coins.",)]
    n = 400
    obs = Observation(
        features=np.zeros((n, NUM_FEATURES), dtype=np.float32),
        problem_ids=tuple(f"p{i}" for i in range(n)),
        step_indices=tuple(len(previous[i % 4]) for i in range(n)),
        questions=(question,) * n,
        steps_so_far=tuple(previous[i % 4] for i in range(n)),
        draft_texts=tuple(drafts[i % 4] for i in range(n)),
    )
    wrong = np.asarray([i % 4 in (1, 3) for i in range(n)])
    every = make_rule("oracle").decide(obs)  # the smallest positive threshold: every wrong draft
    assert (every == wrong).all()
    some = make_rule("oracle", threshold=0.6).decide(obs)  # about 40 % of the problems
    assert not some[~wrong].any() and 0.3 < some[wrong].mean() < 0.5
    assert (make_rule("oracle", threshold=0.0).decide(obs) == 1).all()
    assert make_rule("oracle").with_threshold(NEVER).decide(obs).sum() == 0


def test_oracle_with_one_repair_escalates_only_a_problems_first_wrong_draft() -> None:
    rule = make_rule("oracle", repairs=1)

    def wrong_draft() -> Observation:
        return Observation(
            features=np.zeros((1, NUM_FEATURES), dtype=np.float32),
            problem_ids=("p",),
            step_indices=(0,),
            questions=("Sam has 40 coins: +5 *2.",),
            steps_so_far=((),),
            draft_texts=("40+5=46 coins.",),
        )

    assert rule.decide(wrong_draft()).tolist() == [1]
    assert rule.decide(wrong_draft()).tolist() == [0]
    assert rule.with_threshold(1e-9).decide(wrong_draft()).tolist() == [1]  # a new run


def test_oracle_refuses_observations_without_texts() -> None:
    with pytest.raises(ValueError, match="drafts' texts"):
        make_rule("oracle").decide(_obs(2))
