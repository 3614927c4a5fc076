"""`StepRoutingEnv`: the routing decision as an RLlib multi-agent environment.

Each agent is one problem in flight. An env episode works through `episode_problems` problems
(`training.problems_per_slot` x `concurrency` unless given), `concurrency` at a time, longest
question first: a problem whose solution ends leaves (terminated), and the next one joins in the
same `step`. Every `step`:

    1. the waiting agents' actions arrive: 0 keeps the draft, k > 0 lets model k write the step;
    2. kept drafts are appended at once (`controller.advance`); finished problems leave with
       their terminal reward, and new ones join in the freed slots;
    3. concurrently, as batched calls: the larger models write the escalated steps
       (`controller.escalate`, one call per model) while the small model drafts the next step of
       every problem from 2, and of the problems waiting from the previous `step`
       (`controller.draft`) — the two engines work at the same time;
    4. the escalated steps are appended, finished problems leave, and new ones join; these
       problems *wait*: their next drafts join the next `step`'s draft call instead of a call of
       their own (one draft call per `step`, not two, and a larger batch), unless no other agent
       is left to act. Only the agents that must decide next get an observation. A waiting
       agent's reward comes in this `step`'s rewards; RLlib holds it with the agent's action
       until the agent's next observation (a "hanging" action in `MultiAgentEpisode`).

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

from pipeline.config import ExperimentConfig, load_config, parse_config
from pipeline.controller import Controller
from pipeline.data import load_split
from pipeline.engines.cache import StepCache
from pipeline.engines.types import StepResult
from pipeline.features import NUM_FEATURES
from pipeline.rules import make_rule
from pipeline.trajectory import ReasoningState

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
        self.episode_problems = int(
            config.get("episode_problems", training.problems_per_slot * self.concurrency)
        )
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
        self.controller.prepare(self.problems)  # admitting a problem then tokenizes nothing
        # One event loop for the env's life: engine clients stay bound to it.
        self._loop = asyncio.new_event_loop()

        self.possible_agents = [f"problem_{k}" for k in range(self.episode_problems)]
        self.agents = []
        size = NUM_FEATURES + self.cfg.routing.draft_embedding_dim
        obs_space = gym.spaces.Box(0.0, 1.0, (size,), np.float32)
        act_space = gym.spaces.Discrete(len(self.cfg.models))
        self.observation_spaces = dict.fromkeys(self.possible_agents, obs_space)
        self.action_spaces = dict.fromkeys(self.possible_agents, act_space)

        self.large_only_cost = self._large_only_cost_per_problem()
        self.stats: list[dict[str, float]] = []  # one entry per finished problem
        self._states: dict[str, ReasoningState] = {}
        self._drafts: dict[str, StepResult] = {}
        self._obs: dict[str, np.ndarray] = {}
        self._waiting: list[str] = []  # escalated and joining agents, drafted in the next step
        self._queue: list = []

    # ------------------------------------------------------------------ RLlib API

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng.seed(seed)
        chosen = self._rng.sample(self.problems, min(self.episode_problems, len(self.problems)))
        # Longest question first (a proxy for the most steps): the long problems start in the
        # first wave, so fewer rounds at the episode's end run with only a few problems in
        # flight and small engine batches. pop() takes from the end.
        self._queue = sorted(chosen, key=lambda problem: len(problem.question))
        self._states, self._drafts, self._obs, self._waiting = {}, {}, {}, []
        self._admitted = 0
        self.agents = []
        joined = self._admit()
        return self._observe(joined, self._run(self._draft(joined))), {}

    def step(self, action_dict: dict[str, int]):
        acting = [aid for aid in action_dict if aid in self._states]
        rewards: dict[str, float] = {}
        terminateds: dict[str, bool] = {}
        kept = [aid for aid in acting if int(action_dict[aid]) == 0]
        escalated = [aid for aid in acting if int(action_dict[aid]) != 0]
        # A kept draft is the step: take it, and draft the next step of those problems (and of
        # problems joining in freed slots) while the larger models write the escalated steps.
        # The small and the large engine work at the same time.
        for aid in kept:
            self._take(aid, self._drafts[aid], self.controller.small, rewards, terminateds)
        waited = [aid for aid in self._waiting if aid in self._states]
        ready = [aid for aid in kept if aid in self._states] + waited + self._admit()
        drafts, written = self._run(self._draft_while_escalating(ready, escalated, action_dict))
        for aid in escalated:
            self._take(aid, *written[aid], rewards, terminateds)
            if aid in self._states:  # its draft is spent: it waits for the next one
                del self._drafts[aid], self._obs[aid]
        self._waiting = [aid for aid in escalated if aid in self._states] + self._admit()
        if not ready:  # nobody else would act: draft the waiting problems now
            ready, drafts, self._waiting = self._waiting, self._run(self._draft(self._waiting)), []
        obs = self._observe(ready, drafts)
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

    async def _draft_while_escalating(self, ready, escalated, action_dict):
        return await asyncio.gather(self._draft(ready), self._escalate(escalated, action_dict))

    async def _escalate(
        self, agent_ids: list[str], action_dict: dict[str, int]
    ) -> dict[str, tuple[StepResult, str]]:
        """The larger models write the escalated steps (`Controller.write_escalated`)."""
        states = [self._states[aid] for aid in agent_ids]
        written = await self.controller.write_escalated(
            states, [action_dict[aid] for aid in agent_ids]
        )
        return {agent_ids[i]: step for i, step in written.items()}

    def _take(self, aid: str, step: StepResult, model: str, rewards: dict, terminateds: dict):
        """Keep `step` for agent `aid`: its reward, and its exit when the problem is done."""
        state = self._states[aid]
        self.controller.advance(
            state, step, model, draft=self._drafts[aid], features=self._obs[aid].tolist()
        )
        rewards[aid] = -self.cost_weight * state.steps[-1].cost / self.large_only_cost
        if state.done:
            correct = self.controller.is_correct(state)
            rewards[aid] += float(correct)
            terminateds[aid] = True
            self._finish(aid, state, correct)
            del self._states[aid], self._drafts[aid], self._obs[aid]

    async def _draft(self, agent_ids: list[str]) -> list[StepResult]:
        if not agent_ids:
            return []
        return await self.controller.draft([self._states[aid] for aid in agent_ids])

    def _observe(self, agent_ids: list[str], drafts: list[StepResult]) -> dict[str, np.ndarray]:
        if not agent_ids:
            return {}
        states = [self._states[aid] for aid in agent_ids]
        observation = self.controller.observe(states, drafts)
        for i, aid in enumerate(agent_ids):
            self._drafts[aid] = drafts[i]
            self._obs[aid] = observation.features[i]
        return {aid: self._obs[aid] for aid in agent_ids}

    def _finish(self, aid: str, state: ReasoningState, correct: bool) -> None:
        self.stats.append(
            {
                "correct": float(correct),
                "cost_normalized": state.cost / self.large_only_cost,
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

    def deciding(self) -> dict[str, tuple[str, int]]:
        """The agents that must act next: agent id -> (problem id, step index). For scripted
        rollouts that decide by problem and step, like the `random` rule (benchmarks)."""
        return {
            aid: (self._states[aid].problem.id, len(self._states[aid].steps))
            for aid in self._drafts
        }

    def waiting(self) -> list[str]:
        """The agents that continue but act only after the next `step` (see step 4 above)."""
        return list(self._waiting)

    def set_cost_weight(self, value: float) -> None:
        self.cost_weight = float(value)

    def pop_stats(self) -> list[dict[str, float]]:
        stats, self.stats = self.stats, []
        return stats
