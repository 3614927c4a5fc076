"""StepRoutingEnv obeys RLlib's multi-agent contract under random actions (real engines)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from rllib_env.env import StepRoutingEnv, env_config
from rllib_env.train import dual_update


@pytest.fixture(scope="module")
def env(testbed_cfg, testbed_engines):
    return StepRoutingEnv(
        env_config(testbed_cfg, engines=testbed_engines, concurrency=4, episode_problems=10, seed=3)
    )


def _episode(env, rng: random.Random, p_escalate: float = 0.4):
    obs, _ = env.reset()
    log = [("reset", obs, {}, {})]
    seen_done: set[str] = set()
    last: dict[str, tuple[str, int]] = {}
    pending: set[str] = set()
    while True:
        deciding = env.deciding()
        assert set(deciding) == set(obs)  # it names exactly the agents it asks to act
        for aid, (problem, step) in deciding.items():
            assert last.get(aid, (problem, -1)) == (problem, step - 1)  # same problem, next step
            last[aid] = (problem, step)
        actions = {aid: int(rng.random() < p_escalate) for aid in obs}
        obs, rewards, terminateds, truncateds, _ = env.step(actions)
        log.append((actions, obs, rewards, terminateds))
        assert set(rewards) == set(actions)  # every agent that acted gets its reward now
        assert not (set(obs) & seen_done)  # nothing for agents that are done
        waiting = set(env.waiting())
        assert not (waiting & set(obs))
        for aid in actions:  # terminated, or acts again: now or after the next step
            assert (aid in obs or aid in waiting) != terminateds.get(aid, False)
        assert pending <= set(obs)  # last step's waiting agents act now
        pending = waiting
        seen_done |= {a for a, t in terminateds.items() if t and a != "__all__"}
        assert truncateds == {"__all__": False}
        if terminateds["__all__"]:
            assert not obs
            return log, seen_done


def test_env_contract_holds_over_long_random_runs(env) -> None:
    rng = random.Random(0)
    for _ in range(3):
        log, done = _episode(env, rng)
        assert len(done) == env.episode_problems  # every problem of the episode finished
        first_seen = {}
        for index, (_, obs, _, _) in enumerate(log):
            for aid in obs:
                first_seen.setdefault(aid, index)
                assert env.observation_spaces[aid].contains(obs[aid])
        assert max(first_seen.values()) > 0  # agents joined mid-episode
        assert max(len(obs) for _, obs, _, _ in log) <= env.concurrency


def _keeping_every_draft(env):
    """One episode in which every draft is kept: yields each observation before it is acted on."""
    obs, _ = env.reset()
    while True:
        yield obs
        obs, _, terminated, *_ = env.step(dict.fromkeys(obs, 0))
        if terminated["__all__"]:
            return


def test_the_longest_questions_start_first(env) -> None:
    """Problems join in order of question length, longest first, so that the episode's last
    rounds are not left to a few long problems and small engine batches."""
    lengths = {p.id: len(p.question) for p in env.problems}
    joined: list[str] = []  # problem ids in the order they first act
    for _ in _keeping_every_draft(env):
        joined += [p for p, _ in env.deciding().values() if p not in joined]
    assert len(joined) == env.episode_problems
    order = [lengths[problem] for problem in joined]
    assert order == sorted(order, reverse=True), order


def test_an_episode_works_through_problems_per_slot_times_concurrency(
    testbed_cfg, testbed_engines
) -> None:
    """Without an explicit `episode_problems`, the config's `problems_per_slot` sets how many
    problems an episode works through, `concurrency` at a time."""
    training = testbed_cfg.training.model_copy(update={"problems_per_slot": 3})
    cfg = testbed_cfg.model_copy(update={"training": training})
    env = StepRoutingEnv(env_config(cfg, engines=testbed_engines, concurrency=2, seed=5))
    assert env.episode_problems == 6
    for obs in _keeping_every_draft(env):
        assert len(obs) <= 2
    assert len(env.pop_stats()) == 6


def test_rewards_are_cost_penalties_plus_terminal_correctness(env) -> None:
    env.set_cost_weight(0.7)
    env.pop_stats()
    log, _ = _episode(env, random.Random(1))
    stats = env.pop_stats()
    assert len(stats) == env.episode_problems
    finals = [r for _, _, rewards, terms in log[1:] for a, r in rewards.items() if terms.get(a)]
    steps = [r for _, _, rewards, terms in log[1:] for a, r in rewards.items() if not terms.get(a)]
    assert all(r < 0 for r in steps)  # every step costs something
    assert any(r > 0 for r in finals) or all(s["correct"] == 0 for s in stats)
    env.set_cost_weight(0.0)
    log, _ = _episode(env, random.Random(1))
    rewards = [r for _, _, rs, _ in log[1:] for r in rs.values()]
    assert set(np.unique(rewards)) <= {0.0, 1.0}


def test_dual_ascent_moves_lambda_toward_the_budget() -> None:
    assert dual_update(0.5, measured_cost=0.6, budget=0.4, lr=1.0) == pytest.approx(0.7)
    assert dual_update(0.5, measured_cost=0.2, budget=0.4, lr=1.0) == pytest.approx(0.3)
    assert dual_update(0.1, measured_cost=0.0, budget=0.4, lr=1.0) == 0.0
