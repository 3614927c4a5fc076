"""Running routing rules over a split: every rule, thresholded ones at every operating point,
through one controller (and so one set of engines and one step cache). One row per problem
and operating point, with the step-by-step routing trace."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.calibration import load_operating_points
from pipeline.config import ExperimentConfig
from pipeline.controller import Controller
from pipeline.problem import Problem
from pipeline.prompts import speaks_chat
from pipeline.rules import NEVER, RoutingRule, ThresholdRule, make_rule
from pipeline.trajectory import ReasoningState

__all__ = ["EvaluationResult", "evaluate_with", "points_folder", "policy_folder", "seed_policies"]


def why_not_run(name: str, cfg: ExperimentConfig, controller: Controller) -> str | None:
    """Why rule `name` cannot run here, or None: a PRM rule without a PRM, or the verifier
    rule where the large model is behind a chat API (which cannot score a continuation)."""
    if name == "large_likelihood" and speaks_chat(cfg.models[-1]):
        return "the large model is behind a chat API, which has no prompt echo to score drafts"
    if name != "prm_threshold":
        return None
    if cfg.prm is None:
        return "no process reward model is configured (`prm:` in the config)"
    if cfg.prm.name not in controller.engines:
        return f"the engines given hold no engine for the PRM '{cfg.prm.name}'"
    return None


@dataclass
class EvaluationResult:
    results: pd.DataFrame  # one row per (operating point, problem)
    points: pd.DataFrame  # one row per operating point
    summary: pd.DataFrame  # one row per rule: AUC, APGR, CPT, cost at large accuracy
    skipped: dict[str, str]
    wall_seconds: float
    cache_stats: dict[str, float]
    output_dir: Path | None = None
    policies: dict[str, Path] = field(default_factory=dict)  # label → folder, one per seed


def _trace(state: ReasoningState) -> str:
    """The routing trace of one problem, step by step, as JSON."""
    return json.dumps(
        [
            {
                "model": step.model,
                "text": step.text,
                "cost": step.cost,
                "score": step.score,
                "draft": step.draft_text,
            }
            for step in state.steps
        ]
    )


def _rows(
    label: str, threshold: float, states: list[ReasoningState], controller, traces: bool = True
) -> list[dict]:
    prm = controller.cfg.prm.name if controller.cfg.prm else None
    rows = []
    for state in states:
        row = {
            "rule": label,
            "threshold": threshold,
            "problem_id": state.problem.id,
            "correct": controller.is_correct(state),
            "cost": state.cost,
            # what scoring with the process reward model cost (in `cost`; 0 for other rules)
            "prm_cost": state.cost_by_model.get(prm, 0.0) if prm else 0.0,
            **{f"cost_{name}": value for name, value in sorted(state.costs.items())},
            "steps": len(state.steps),
            # kept drafts that came back without logprobs (a server that returns none):
            # their confidence features were neutral
            "drafts_without_logprobs": sum(
                s.model == controller.small and bool(s.token_ids) and math.isnan(s.mean_logprob)
                for s in state.steps
            ),
            "escalations": state.escalations,
            "escalated_steps": [i for i, s in enumerate(state.steps) if s.escalated],
            "stop_reason": state.stop_reason,
            "final_answer": state.final_answer,
        }
        if traces:
            row["trace"] = _trace(state)
        rows.append(row)
    return rows


def _threshold_rows(
    label: str,
    thresholds: list[float],
    by_threshold: dict[float, list[ReasoningState]],
    controller,
    traces: bool,
) -> pd.DataFrame:
    """`_rows` of every threshold of a one-pass run (`Controller.run_thresholds`), each distinct
    state's row built once: the thresholds share most of their states. Calibration's ~225
    thresholds times 4,160 problems as one dict a row took ~23 s and ~0.55 GiB more
    (benchmarks/RESULTS.md, "Calibration, every κ in one pass")."""
    position: dict[int, int] = {}  # id(state) -> its row among the distinct states
    distinct: list[ReasoningState] = []
    picks: list[int] = []
    for threshold in thresholds:
        for state in by_threshold[threshold]:
            if id(state) not in position:
                position[id(state)] = len(distinct)
                distinct.append(state)
            picks.append(position[id(state)])
    table = pd.DataFrame(_rows(label, math.nan, distinct, controller, traces))
    table = table.iloc[picks].reset_index(drop=True)
    table["threshold"] = np.repeat(thresholds, [len(by_threshold[t]) for t in thresholds])
    return table


def _thresholds(probe: list[ReasoningState], targets: tuple[float, ...]) -> list[float]:
    """Thresholds at which the given fraction of the probe's drafts would escalate."""
    scores = np.asarray([s.score for state in probe for s in state.steps if s.score is not None])
    if scores.size == 0:
        return [0.0]
    levels = {float(np.quantile(scores, 1.0 - t, method="higher")) for t in targets}
    return sorted(levels | {0.0}, reverse=True)


async def evaluate_with(
    cfg: ExperimentConfig,
    controller: Controller,
    problems: list[Problem],
    rules: list[str],
    progress: Callable[[str, int, int], None] | None = None,
    policies: dict[str, Path] | None = None,
    traces: bool = True,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Run every rule (thresholded ones at every operating point) over `problems`.

    `policies` (label → policy folder, e.g. one per training seed) runs the `policy` rule once
    per folder, its rows labelled with the label instead of `policy`. `traces=False` leaves out
    each row's step-by-step trace (calibration's grid of hundreds of κ keeps none)."""
    ev = cfg.evaluation
    parts: list[pd.DataFrame] = []  # rows, in order: rule by rule, point by point
    skipped: dict[str, str] = {}
    # Every rule and operating point starts the same problems: tokenize their prompts once
    # (calibration's grid starts each problem ~225 times).
    controller.prepare(problems)

    async def run(rule: RoutingRule, label: str) -> list[ReasoningState]:
        shown = (
            rule.describe().replace(rule.name, label, 1)
            if isinstance(rule, ThresholdRule)
            else label
        )
        return await controller.run(
            problems,
            rule,
            concurrency=ev.concurrency,
            progress=(lambda done, total: progress(shown, done, total)) if progress else None,
        )

    async def sweep(rule: RoutingRule, label: str, points_dir: Path | None = None) -> None:
        if not isinstance(rule, ThresholdRule):
            states = await run(rule, label)
            parts.append(pd.DataFrame(_rows(label, math.nan, states, controller, traces)))
            return
        probe = await run(rule.with_threshold(NEVER), label)
        parts.append(pd.DataFrame(_rows(label, NEVER, probe, controller, traces)))
        if rule.thresholds:  # a rule with operating points of its own (the oracle)
            thresholds = set(rule.thresholds) | {0.0}
        else:
            thresholds = set(_thresholds(probe, ev.escalation_targets))
        if points_dir is not None:  # the calibrated operating points, too
            thresholds |= {p.kappa for p in load_operating_points(points_dir)}
        ordered = sorted(thresholds, reverse=True)
        if ev.shared_trajectories and rule.decides_by_score_alone():
            # Every operating point in one pass: each problem is solved once per distinct
            # trajectory, not once per point (`Controller.run_thresholds`).
            shown = f"{label} at {len(ordered)} thresholds"
            by_threshold = await controller.run_thresholds(
                problems,
                rule,
                ordered,
                concurrency=ev.concurrency,
                progress=(lambda done, total: progress(shown, done, total)) if progress else None,
            )
            parts.append(_threshold_rows(label, ordered, by_threshold, controller, traces))
            return
        # The operating points run side by side: one point's last, thinly batched rounds
        # overlap the others' work, and the small and the large engine work at the same time.
        gate = asyncio.Semaphore(ev.points_in_flight)

        async def point(threshold: float) -> list[dict]:
            # Rows as soon as a point ends: its states (every step of every problem) are freed
            # then, not held until the last of hundreds of points ends.
            async with gate:
                states = await run(rule.with_threshold(threshold), label)
            return _rows(label, threshold, states, controller, traces)

        for point_rows in await asyncio.gather(*(point(t) for t in ordered)):
            parts.append(pd.DataFrame(point_rows))

    policy_dir = policy_folder(cfg)
    for name in dict.fromkeys(["small_only", "large_only", *rules]):
        if name in rules and (why := why_not_run(name, cfg, controller)):
            skipped[name] = why
            continue
        if name == "policy" and policies:
            for label, folder in policies.items():
                await sweep(make_rule("policy", policy=str(folder)), label, folder)
            continue
        params = {"policy": str(policy_dir)} if name == "policy" and policy_dir else {}
        await sweep(make_rule(name, **params), name, points_folder(cfg, name))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(), skipped


def seed_policies(cfg: ExperimentConfig, seeds: list[int]) -> dict[str, Path]:
    """`policy/seed-<s>` → the policy `steproute train --seeds` exported for seed s."""
    policies = {f"policy/seed-{s}": cfg.seed_dir(s) / "policy" for s in seeds}
    missing = [str(p) for p in policies.values() if not (p / "policy.json").exists()]
    if missing:
        raise ValueError(
            f"no trained policy in {missing}; fix: run `steproute train --seeds "
            f"{','.join(map(str, seeds))}` first"
        )
    return policies


def points_folder(cfg: ExperimentConfig, rule: str) -> Path | None:
    """Where rule `rule`'s calibrated operating points are, if anywhere: beside the policy for
    `policy`, `cfg.rule_dir(rule)` for a baseline calibrated with `steproute calibrate --rule`."""
    return policy_folder(cfg) if rule == "policy" else cfg.rule_dir(rule)


def policy_folder(cfg: ExperimentConfig) -> Path | None:
    """The `policy` rule's network: `evaluation.policy`, else a trained one in the output
    folder (`steproute train` exports it there), else None (the hand-set linear policy)."""
    if cfg.evaluation.policy:
        return Path(cfg.evaluation.policy)
    trained = Path(cfg.output_dir) / "policy"
    return trained if (trained / "policy.json").exists() else None
