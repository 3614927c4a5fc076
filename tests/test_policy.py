"""RouterPolicy persistence: input statistics, older exports, the draft-embedding columns, and
`load_policy`, which reads what a config or command line names as a policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.features import NUM_FEATURES
from pipeline.policy import HAND_SET, RouterPolicy, load_policy


def _randomized(policy: RouterPolicy) -> RouterPolicy:
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.normal_()
    return policy


def test_standardization_statistics_change_the_output_and_survive_a_save(tmp_path) -> None:
    policy = _randomized(RouterPolicy((8,)))
    obs = np.random.default_rng(0).random((16, NUM_FEATURES))
    raw = policy.escalation_probability(obs)
    policy.set_feature_statistics(
        torch.full((NUM_FEATURES,), 0.5), torch.full((NUM_FEATURES,), 0.1)
    )
    standardized = policy.escalation_probability(obs)
    assert not torch.allclose(raw, standardized)
    loaded = RouterPolicy.load(policy.save(tmp_path / "p"))
    torch.testing.assert_close(loaded.escalation_probability(obs), standardized)


def test_a_policy_saved_without_statistics_loads_unstandardized(tmp_path) -> None:
    policy = _randomized(RouterPolicy((8,)))
    folder = policy.save(tmp_path / "old")
    state = torch.load(folder / "policy.pt", weights_only=True)
    del state["feature_mean"], state["feature_std"]  # what exports before standardization held
    torch.save(state, folder / "policy.pt")
    obs = np.random.default_rng(1).random((4, NUM_FEATURES))
    torch.testing.assert_close(
        RouterPolicy.load(folder).escalation_probability(obs), policy.escalation_probability(obs)
    )


def test_an_older_policy_reads_its_own_columns_when_features_were_added(tmp_path) -> None:
    """Trained on the first NUM_FEATURES - 1 named features plus a 4-wide draft embedding: in
    today's observation a new named feature sits between those and the embedding."""
    old = _randomized(
        RouterPolicy((8,), num_features=NUM_FEATURES - 1 + 4, num_named=NUM_FEATURES - 1)
    )
    old_obs = np.random.default_rng(2).random((5, NUM_FEATURES - 1 + 4))
    with torch.no_grad():  # the network on the observation layout it was trained with
        logits = old(torch.as_tensor(old_obs, dtype=torch.float32)).double()
        expected = torch.softmax(logits, -1)[:, 1]
    folder = old.save(tmp_path / "p")
    new_obs = np.insert(old_obs, NUM_FEATURES - 1, 0.77, axis=1)  # the added feature's column
    loaded = RouterPolicy.load(folder)
    assert loaded.num_named == NUM_FEATURES - 1
    torch.testing.assert_close(loaded.escalation_probability(new_obs), expected)


def test_escalation_scores_of_a_confident_policy_stay_ordered() -> None:
    """p(keep) of 1 − 1e-9 and 1 − 1e-12 both round to 1 in float32; their escalation scores
    must still differ and keep the logits' order (calibration thresholds between them)."""
    policy = RouterPolicy(hidden_sizes=())
    with torch.no_grad():
        policy.head.weight.zero_()
        policy.head.bias.zero_()
        policy.head.weight[0, 0] = 1.0  # keep logit = feature 0; escalate logit = 0
    margins = np.array([[9.0], [12.0], [20.0], [27.0], [40.0]]) * np.log(10)
    obs = np.hstack([margins, np.zeros((5, NUM_FEATURES - 1))])
    scores = policy.escalation_probability(obs).numpy()
    assert np.all(np.diff(scores) < 0)
    np.testing.assert_allclose(scores, np.exp(-margins[:, 0]), rtol=1e-3)


def test_load_policy_of_hand_set_or_none_is_the_hand_set_policy() -> None:
    obs = np.random.default_rng(0).random((6, NUM_FEATURES))
    expected = RouterPolicy.hand_set().escalation_probability(obs)
    for where in (HAND_SET, None):
        torch.testing.assert_close(load_policy(where).escalation_probability(obs), expected)


def test_load_policy_reads_a_saved_folder(tmp_path) -> None:
    policy = _randomized(RouterPolicy((8,)))
    folder = policy.save(tmp_path / "trained")
    obs = np.random.default_rng(1).random((4, NUM_FEATURES))
    for where in (folder, str(folder)):
        loaded = load_policy(where)
        torch.testing.assert_close(
            loaded.escalation_probability(obs), policy.escalation_probability(obs)
        )


def test_load_policy_of_a_missing_folder_names_the_path(tmp_path) -> None:
    missing = tmp_path / "no-such-policy"
    with pytest.raises(FileNotFoundError, match="no-such-policy") as error:
        load_policy(missing)
    assert str(missing.resolve()) in str(error.value) and HAND_SET in str(error.value)
