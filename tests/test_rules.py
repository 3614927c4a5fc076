"""Routing rules: the registry, thresholds, the random rule's rate, policies."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.controller import Observation
from pipeline.features import FEATURE_NAMES, NUM_FEATURES
from pipeline.policy import RouterPolicy
from pipeline.rules import NEVER, RULES, RoutingRule, make_rule, register


def _obs(n: int, mean_prob: float | np.ndarray = 0.9, verifier=None) -> Observation:
    features = np.full((n, NUM_FEATURES), 0.5, dtype=np.float32)
    features[:, FEATURE_NAMES.index("draft/mean_prob")] = mean_prob
    return Observation(
        features=features,
        problem_ids=tuple(f"p{i}" for i in range(n)),
        step_indices=(0,) * n,
        verifier_mean_logprob=verifier,
    )


def test_registry_refuses_a_duplicate_name() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register("small_only")(type("Again", (RoutingRule,), {}))


def test_unknown_rule_error_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: .*confidence_threshold"):
        make_rule("bogus")


def test_every_threshold_rule_runs_from_never_to_always() -> None:
    obs = _obs(50, np.linspace(0.01, 0.99, 50), verifier=np.linspace(-3, 0, 50))
    for name in ("random", "confidence_threshold", "large_likelihood", "policy"):
        rule = make_rule(name)
        assert rule.with_threshold(NEVER).decide(obs).sum() == 0, name
        assert (rule.with_threshold(0.0).decide(obs) == 1).all(), name


def test_confidence_threshold_escalates_the_unsure_drafts() -> None:
    rule = make_rule("confidence_threshold", threshold=0.2)  # escalate when mean prob < 0.8
    actions = rule.decide(_obs(3, np.array([0.95, 0.85, 0.5])))
    assert actions.tolist() == [0, 0, 1]


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


def test_policy_rule_round_trips_a_saved_policy(tmp_path) -> None:
    policy = RouterPolicy(hidden_sizes=(8,))
    policy.save(tmp_path / "p")
    obs = _obs(6, np.linspace(0.1, 0.9, 6))
    direct = make_rule("policy", policy=policy, kappa=0.5).scores(obs)
    loaded = make_rule("policy", policy=str(tmp_path / "p"), kappa=0.5).scores(obs)
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
        "prm_threshold",
        "policy",
    } <= set(RULES)
