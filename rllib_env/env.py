"""`StepRoutingEnv`: the routing decision as an RLlib multi-agent environment.

Each agent is one problem in flight. An env episode works through `episode_problems` problems,
`concurrency` at a time: a problem whose solution ends leaves (terminated), and the next one
joins in the same `step`. Every `step`:

    1. the waiting agents' actions arrive: 0 keeps the draft, k > 0 lets model k write the step;
    2. all escalations go out as one batched engine call (`controller.escalate`), then every
       kept step is appended (`controller.advance`);
    3. finished problems leave with their terminal reward, new ones join;
    4. all next drafts go out as one batched call (`controller.draft`) and only the agents that
       must decide next get an observation.

Reward per decision: −λ·(cost of this step / large-only cost per problem), plus 1 at the end if
the graded answer is correct. λ comes from config (`training.cost_weight`) and can be changed
between iterations (`set_cost_weight`, used by dual ascent). The step loop itself is the shared
controller's; this class only translates between it and RLlib.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import gymnasium as gym
import numpy as np
from ray.rllib.env.multi_agent_env import MultiAgentEnv

from pipeline.cache import StepCache
from pipeline.config import ExperimentConfig, load_config, parse_config
from pipeline.controller import Controller, ReasoningState
from pipeline.data import load_split
from pipeline.engines.types import StepResult
from pipeline.features import NUM_FEATURES
from pipeline.rules import make_rule

log = logging.getLogger(__name__)

__all__ = ["StepRoutingEnv", "env_config"]


def env_config(cfg: ExperimentConfig, **extra: Any) -> dict[str, Any]:
    """The `env_config` dict for `cfg` (plain data: it travels to every env runner)."""
    return {"experiment": cfg.model_dump(mode="json"), **extra}


class StepRoutingEnv(MultiAgentEnv):
    """`config`: `experiment` (a config dict) or `config_path`; optional `split` (train),
    `concurrency`, `episode_problems`, `cost_weight`, `engines` (in-process use), `seed`."""

    def __init__(self, config: dict | None = None) -> None:
        super().__init__()
        config = config or {}
        if "experiment" in config:
            self.cfg = parse_config(config["experiment"])
        else:
            self.cfg = load_config(config.get("config_path", "configs/testbed.yaml"))
        training = self.cfg.training
        self.concurrency = int(config.get("concurrency", training.concurrency))
        self.episode_problems = int(config.get("episode_problems", 2 * self.concurrency))
        self.cost_weight = float(config.get("cost_weight", training.cost_weight))
        self.problems = load_split(self.cfg.dataset, config.get("split", "train"))
        if not self.problems:
            raise ValueError(f"split '{config.get('split', 'train')}' has no problems")
        self._rng = random.Random(config.get("seed", training.seed))

        engines = config.get("engines")
        if engines is None:
            from pipeline.engines.launch import start_engines

            cache = StepCache(self.cfg.step_cache_dir)
            engines = start_engines(self.cfg.models, use_ray=True, cache=cache)
        self.controller = Controller(self.cfg, engines)
        # One event loop for the env's life: engine clients stay bound to it.
        self._loop = asyncio.new_event_loop()

        self.possible_agents = [f"problem_{k}" for k in range(self.episode_problems)]
        self.agents = []
        size = NUM_FEATURES + self.cfg.routing.draft_embedding_dim
        obs_space = gym.spaces.Box(0.0, 1.0, (size,), np.float32)
        act_space = gym.spaces.Discrete(len(self.cfg.models))
        self.observation_spaces = dict.fromkeys(self.possible_agents, obs_space)
        self.action_spaces = dict.fromkeys(self.possible_agents, act_space)

        self.cost_scale = self._large_only_cost_per_problem()
        self.stats: list[dict[str, float]] = []  # one entry per finished problem
        self._states: dict[str, ReasoningState] = {}
        self._drafts: dict[str, StepResult] = {}
        self._obs: dict[str, np.ndarray] = {}
        self._queue: list = []

    # ------------------------------------------------------------------ RLlib API

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng.seed(seed)
        self._queue = self._rng.sample(
            self.problems, min(self.episode_problems, len(self.problems))
        )
        self._queue.reverse()  # pop() from the end
        self._states, self._drafts, self._obs = {}, {}, {}
        self._admitted = 0
        self.agents = []
        joined = self._admit()
        return self._draft_and_observe(joined), {}

    def step(self, action_dict: dict[str, int]):
        acting = [aid for aid in action_dict if aid in self._states]
        rewards: dict[str, float] = {}
        terminateds: dict[str, bool] = {}
        # Escalations: one batched call per larger model.
        written = {aid: (self._drafts[aid], self.controller.small) for aid in acting}
        for level in range(1, len(self.cfg.models)):
            chosen = [aid for aid in acting if int(action_dict[aid]) == level]
            if chosen:
                name = self.cfg.models[level].name
                results = self._run(
                    self.controller.escalate([self._states[a] for a in chosen], name)
                )
                for aid, result in zip(chosen, results, strict=True):
                    written[aid] = (result, name)
        for aid in acting:
            state = self._states[aid]
            result, model = written[aid]
            self.controller.advance(
                state, result, model, draft=self._drafts[aid], features=self._obs[aid].tolist()
            )
            rewards[aid] = -self.cost_weight * state.steps[-1].cost / self.cost_scale
            if state.done:
                correct = self.controller.is_correct(state)
                rewards[aid] += float(correct)
                terminateds[aid] = True
                self._finish(aid, state, correct)
        continuing = [aid for aid in acting if not self._states[aid].done]
        for aid in [a for a in acting if self._states[a].done]:
            del self._states[aid], self._drafts[aid], self._obs[aid]
        joined = self._admit()
        obs = self._draft_and_observe(continuing + joined)
        terminateds["__all__"] = not self._states and not self._queue
        return obs, rewards, terminateds, {"__all__": False}, {}

    # ------------------------------------------------------------------ helpers

    def _admit(self) -> list[str]:
        joined = []
        while self._queue and len(self._states) < self.concurrency:
            aid = self.possible_agents[self._admitted]
            self._admitted += 1
            self._states[aid] = self.controller.start(self._queue.pop())
            joined.append(aid)
        self.agents = list(self._states)
        return joined

    def _draft_and_observe(self, agent_ids: list[str]) -> dict[str, np.ndarray]:
        if not agent_ids:
            return {}
        states = [self._states[aid] for aid in agent_ids]
        drafts = self._run(self.controller.draft(states))
        observation = self.controller.observe(states, drafts)
        for i, aid in enumerate(agent_ids):
            self._drafts[aid] = drafts[i]
            self._obs[aid] = observation.features[i]
        return {aid: self._obs[aid] for aid in agent_ids}

    def _finish(self, aid: str, state: ReasoningState, correct: bool) -> None:
        self.stats.append(
            {
                "correct": float(correct),
                "cost_normalized": state.cost / self.cost_scale,
                "escalation_rate": state.escalations / max(1, len(state.steps)),
                "steps": float(len(state.steps)),
            }
        )

    def _run(self, coroutine):
        return self._loop.run_until_complete(coroutine)

    def _large_only_cost_per_problem(self, sample: int = 16) -> float:
        """The reward's cost unit: large-only cost per problem, on a few training problems."""
        states = self._run(self.controller.run(self.problems[:sample], make_rule("large_only")))
        return max(1e-9, sum(s.cost for s in states) / len(states))

    # ------------------------------------------------------------------ training hooks

    def set_cost_weight(self, value: float) -> None:
        self.cost_weight = float(value)

    def pop_stats(self) -> list[dict[str, float]]:
        stats, self.stats = self.stats, []
        return stats
