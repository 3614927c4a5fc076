"""PPO training of the router: export round trip and resume after a crash (tiny budgets)."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

from pipeline.config import parse_config
from pipeline.features import NUM_FEATURES
from pipeline.policy import RouterPolicy
from rllib_env.module import RouterRLModule
from rllib_env.train import train


def test_exported_policy_gives_the_modules_action_probabilities(tmp_path) -> None:
    space = gym.spaces.Box(0.0, 1.0, (NUM_FEATURES,), np.float32)
    mean, std = torch.rand(NUM_FEATURES), 0.05 + torch.rand(NUM_FEATURES)
    module = RouterRLModule(
        observation_space=space,
        action_space=gym.spaces.Discrete(2),
        model_config={
            "hidden_sizes": [16, 16],
            "feature_mean": mean.tolist(),
            "feature_std": std.tolist(),
        },
    )
    with torch.no_grad():  # features that matter: the statistics must travel with the export
        module.policy.head.weight.normal_()
    obs = torch.rand(32, NUM_FEATURES)
    logits = module.forward_inference({"obs": obs})["action_dist_inputs"]
    loaded = RouterPolicy.load(module.policy.save(tmp_path / "policy"))
    expected = 1 - torch.softmax(logits, -1)[:, 0]
    torch.testing.assert_close(loaded.escalation_probability(obs), expected.detach().double())


@pytest.fixture
def tiny_training_cfg(testbed_cfg, tmp_path):
    raw = testbed_cfg.model_dump(mode="json")
    raw["output_dir"] = str(tmp_path)
    raw["training"] |= {
        "iterations": 3,
        "train_batch_size": 48,
        "minibatch_size": 24,
        "num_epochs": 1,
        "concurrency": 8,
        "checkpoint_every": 1,
        "hidden_sizes": [16, 16],
        "warm_start_problems": 0,  # PPO from scratch; the warm start has its own test
    }
    return parse_config(raw)


def test_training_resumes_from_the_last_checkpoint_after_a_crash(
    tiny_training_cfg, testbed_engines, tmp_path
) -> None:
    class Crash(RuntimeError):
        pass

    def crash_after_first(iteration: int, metrics: dict) -> None:
        if iteration == 2:
            raise Crash

    # An earlier, longer run left its checkpoints here: a fresh start removes them, so a
    # later `--resume` continues this run, not that run's highest iteration.
    stale = tmp_path / "train" / "checkpoints" / "iter_00009"
    stale.mkdir(parents=True)
    (stale / "steproute.json").write_text('{"iteration": 9, "cost_weight": 0.5}')
    with pytest.raises(Crash):
        train(tiny_training_cfg, on_iteration=crash_after_first, track=False)
    checkpoints = sorted((tmp_path / "train" / "checkpoints").glob("iter_*"))
    assert [c.name for c in checkpoints] == ["iter_00001"]  # iteration 2 died before saving

    # A tagged run (`steproute pipeline` tags with its config hash) resumes only its own tag's
    # checkpoints: the untagged run's are another run's, so it starts over and crashes again.
    seen: list[int] = []

    def crash_again(iteration: int, metrics: dict) -> None:
        seen.append(iteration)
        crash_after_first(iteration, metrics)

    with pytest.raises(Crash):
        train(
            tiny_training_cfg,
            resume=True,
            run_tag="config-b",
            on_iteration=crash_again,
            track=False,
        )
    assert seen == [1, 2]

    # A run killed while saving iteration 2 left RLlib's state without `steproute.json`.
    (tmp_path / "train" / "checkpoints" / "iter_00002").mkdir()
    seen.clear()
    policy_dir = train(
        tiny_training_cfg,
        resume=True,
        run_tag="config-b",
        on_iteration=lambda i, m: seen.append(i),
        track=True,
    )
    assert seen == [2, 3]
    assert (policy_dir / "policy.json").exists()
    assert RouterPolicy.load(policy_dir).escalation_probability(
        np.full((1, NUM_FEATURES + tiny_training_cfg.routing.draft_embedding_dim), 0.5)
    ).shape == (1,)


def test_two_env_runners_sample_across_finished_agents(tiny_training_cfg, testbed_engines) -> None:
    """Samples end mid-episode, so agents whose problem finished in an earlier sample are absent
    from the next one. RLlib 2.60 then sums a NaN step count and raises (ray-project/ray#62635)
    unless the training callback fills in zeros."""
    raw = tiny_training_cfg.model_dump(mode="json")
    raw["training"] |= {"num_env_runners": 2, "iterations": 4, "checkpoint_every": 4}
    seen: list[dict] = []
    train(parse_config(raw), on_iteration=lambda i, m: seen.append(m), track=False)
    assert len(seen) == 4
    assert sum(m["rollout/problems"] for m in seen) > 0  # problems finished on the runners


def test_feature_statistics_describe_the_observations(tiny_training_cfg, testbed_engines) -> None:
    from pipeline.features import FEATURE_NAMES
    from rllib_env.train import STD_FLOOR, feature_statistics

    mean, std = feature_statistics(tiny_training_cfg, testbed_engines, problems=24)
    width = NUM_FEATURES + tiny_training_cfg.routing.draft_embedding_dim  # + the draft embedding
    assert len(mean) == len(std) == width
    assert all(0.0 <= m <= 1.0 for m in mean) and all(s >= STD_FLOOR for s in std)
    # Questions differ in length, and the random routing escalated some steps.
    assert std[FEATURE_NAMES.index("traj/prompt_length")] > STD_FLOOR
    assert mean[FEATURE_NAMES.index("traj/prev_escalated")] > 0.0


def test_train_seeds_exports_one_policy_per_seed(tiny_training_cfg, testbed_engines, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from pipeline.cli import app

    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(tiny_training_cfg.model_dump(mode="json")))
    args = ["train", "-c", str(config), "--seeds", "0,1", "--iterations", "1", "--no-mlflow"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    # Training again in this process does not re-register RLlib's env over the last one.
    assert not [w for w in caught if "Overriding environment" in str(w.message)]
    policies = [RouterPolicy.load(tiny_training_cfg.seed_dir(s) / "policy") for s in (0, 1)]
    assert not (tmp_path / "policy").exists()  # seeds never overwrite the single policy
    first, second = (p.state_dict()["head.weight"] for p in policies)
    assert not torch.equal(first, second)  # the seed reached the network's initialization


def test_ppo_starts_from_the_warm_started_policy(tiny_training_cfg, testbed_engines, tmp_path):
    """The supervised warm start (Monte-Carlo labels on a few training problems) is saved, PPO's
    module loads it whole (weights and input statistics), and PPO then moves it."""
    raw = tiny_training_cfg.model_dump(mode="json")
    raw["training"] |= {"warm_start_problems": 12, "warm_start_epochs": 5, "iterations": 0}
    warm_only = train(parse_config(raw), env_extra={"engines": testbed_engines}, track=False)
    warm = RouterPolicy.load(tmp_path / "train" / "warm_start")
    width = warm.num_features
    assert width == NUM_FEATURES + tiny_training_cfg.routing.draft_embedding_dim
    assert not torch.equal(warm.feature_std, torch.ones(width))  # measured on the labelled drafts
    obs = np.random.default_rng(0).random((16, width))
    torch.testing.assert_close(
        RouterPolicy.load(warm_only).escalation_probability(obs), warm.escalation_probability(obs)
    )
    raw["training"] |= {"iterations": 1}
    raw["output_dir"] = str(tmp_path / "with_ppo")
    tuned = RouterPolicy.load(
        train(parse_config(raw), env_extra={"engines": testbed_engines}, track=False)
    )
    assert not torch.allclose(tuned.escalation_probability(obs), warm.escalation_probability(obs))
