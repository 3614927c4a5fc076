"""Monte-Carlo step labels and the supervised warm start of the routing policy.

A draft's label comes from final answers only, as Math-Shepherd's do, so any benchmark with gold
answers can produce it (the testbed's step grader is never used): keep the draft, let the
completer (the largest model) write every remaining step, and grade the answer.

    keep_ok = is_correct(prefix + draft + completer's remaining steps)

A draft that breaks the solution is one the completer cannot finish from; a sound one it can.
Labels are collected along a guided path: a draft labelled sound is kept, otherwise the
completer writes that step, so later drafts are labelled on a prefix that is still right, with
trajectory features (steps escalated so far, cost so far) like those a good router sees. Greedy
decoding makes each label a single rollout; drafts and rollouts batch across the problems in
flight, and a step cache makes a second collection on the same problems a lookup.

`fit_policy` then trains a `RouterPolicy` to predict "escalate" (not keep_ok) from the
observation, a cross-entropy on its logits: the warm start that PPO continues from.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.controller import Controller
from pipeline.data import Problem
from pipeline.policy import RouterPolicy
from pipeline.rules import make_rule
from pipeline.trajectory import ReasoningState

log = logging.getLogger(__name__)

__all__ = ["StepLabels", "fit_policy", "monte_carlo_labels"]


@dataclass(frozen=True)
class StepLabels:
    features: np.ndarray  # (drafts, observation width): what the router saw
    keep_ok: np.ndarray  # (drafts,) bool: the completer still finished correctly after the draft
    problem_ids: tuple[str, ...]  # per draft: its problem
    step_indices: tuple[int, ...]  # per draft: the step it proposed
    paths: tuple[ReasoningState, ...]  # the guided trajectories, in problem order
    rollouts: int  # completer rollouts run (a draft that ends the problem needs none)

    @property
    def escalate_share(self) -> float:
        return float(1.0 - self.keep_ok.mean()) if len(self.keep_ok) else 0.0


async def _complete(controller: Controller, branches: list[ReasoningState], rule) -> None:
    active = [b for b in branches if not b.done]
    while active:
        await controller.step(active, rule)
        active = [b for b in active if not b.done]


async def monte_carlo_labels(
    controller: Controller, problems: Sequence[Problem], concurrency: int = 64
) -> StepLabels:
    """Label every draft on the guided path of each problem (see the module docstring)."""
    completer = controller.large
    complete_rule = make_rule("large_only")
    paths = [controller.start(p) for p in problems]
    waiting = list(reversed(paths))
    active: list[ReasoningState] = []
    features, labels, problem_ids, step_indices, rollouts = [], [], [], [], 0
    started = time.perf_counter()
    while waiting or active:
        while waiting and len(active) < concurrency:
            active.append(waiting.pop())
        drafts = await controller.draft(active)
        obs = controller.observe(active, drafts)
        branches = []
        for state, draft, row in zip(active, drafts, obs.features, strict=True):
            branch = copy.deepcopy(state)
            controller.advance(branch, draft, controller.small, features=row.tolist())
            branches.append(branch)
        rollouts += sum(not b.done for b in branches)
        await _complete(controller, branches, complete_rule)
        keep = [controller.is_correct(b) for b in branches]
        bad = [i for i, ok in enumerate(keep) if not ok]
        steps = await controller.escalate([active[i] for i in bad], completer)
        written = dict(zip(bad, steps, strict=True))
        for i, (state, draft) in enumerate(zip(active, drafts, strict=True)):
            row = obs.features[i].tolist()
            if keep[i]:
                controller.advance(state, draft, controller.small, features=row)
            else:
                controller.advance(state, written[i], completer, draft=draft, features=row)
        features.append(obs.features)
        labels += keep
        problem_ids += obs.problem_ids
        step_indices += obs.step_indices
        active = [s for s in active if not s.done]
    result = StepLabels(
        features=np.concatenate(features) if features else np.zeros((0, 0), np.float32),
        keep_ok=np.asarray(labels, dtype=bool),
        problem_ids=tuple(problem_ids),
        step_indices=tuple(step_indices),
        paths=tuple(paths),
        rollouts=rollouts,
    )
    log.info(
        "Monte-Carlo labels: %d drafts on %d problems (%.1f %% need the completer), "
        "%d rollouts, %.1f s",
        len(labels),
        len(problems),
        100 * result.escalate_share,
        rollouts,
        time.perf_counter() - started,
    )
    return result


def fit_policy(
    policy: RouterPolicy,
    labels: StepLabels,
    *,
    epochs: int = 30,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
) -> list[float]:
    """Train `policy` in place to escalate the drafts labelled not keep_ok (to the largest
    model, the last action). Returns the mean loss of each epoch."""
    if not len(labels.keep_ok):
        raise ValueError("no labelled drafts to fit the policy on")
    generator = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(labels.features, dtype=torch.float32)
    target = torch.as_tensor(np.where(labels.keep_ok, 0, policy.num_actions - 1))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    policy.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            loss = torch.nn.functional.cross_entropy(policy(x[index]), target[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        losses.append(total / len(x))
    policy.eval()
    return losses
