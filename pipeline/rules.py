"""Routing rules: given a batch of drafts' observations, keep each draft (0) or escalate it.

A rule is a tiny class in a registry (`register`, `make_rule`). Thresholded rules compute an
escalation score in [0, 1] per draft and escalate iff score >= threshold, so a sweep of the
threshold from above 1 down to 0 runs from small-only to always-escalate. Escalation goes to the
largest model of the ladder (action K-1).

| name | score (escalate iff score >= threshold) |
| --- | --- |
| `small_only` / `large_only` | never / always |
| `random` | uniform, from a hash of (problem, step, seed): escalates a fraction p = 1 - threshold |
| `confidence_threshold` | 1 - draft mean token probability (STEER-like: escalate when unsure) |
| `calculator_confidence` | (arithmetic_error + 1 - mean probability) / 2: drafts a calculator contradicts first, then the least sure |
| `large_likelihood` | 1 - exp(mean logprob of the draft under the large model) (SpecReason-like) |
| `first_token_entropy` | normalized entropy of the draft's first token's top-k (GlimpRouter-like) |
| `prm_threshold` | 1 - process reward of the draft (RSD-like; needs a PRM model) |
| `policy` | p(escalate) of a `RouterPolicy`; the threshold is the calibrated κ |
| `oracle` | testbed only: a wrong draft (by the step grader) scores a draw in (0, 1] per problem, a right one 0 |

`oracle` is the upper reference, not a baseline: it escalates exactly the drafts that
`pipeline.testbed.tasks.grade_step` marks wrong, and its threshold picks the share of problems it
repairs (threshold t: problems whose draw is >= t), so its curve runs from small-only through
"every wrong draft escalated" (the smallest positive threshold) to always-escalate (0).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np

from pipeline.features import FEATURE_NAMES, Observation

__all__ = ["RULES", "RoutingRule", "ThresholdRule", "make_rule", "register"]

RULES: dict[str, type[RoutingRule]] = {}
NEVER = math.inf  # a threshold no score reaches


def register(name: str) -> Callable[[type[RoutingRule]], type[RoutingRule]]:
    def add(cls: type[RoutingRule]) -> type[RoutingRule]:
        if name in RULES:
            raise ValueError(f"routing rule '{name}' is already registered ({RULES[name]})")
        cls.name = name
        RULES[name] = cls
        return cls

    return add


def make_rule(name: str, **params) -> RoutingRule:
    try:
        cls = RULES[name]
    except KeyError:
        raise ValueError(f"unknown routing rule '{name}'; known: {sorted(RULES)}") from None
    return cls(**params)


class RoutingRule:
    name: ClassVar[str] = "?"
    needs_verifier: ClassVar[bool] = False  # the controller scores drafts with the large model
    needs_prm: ClassVar[bool] = False  # the controller scores drafts with a process reward model
    drafts: ClassVar[bool] = True  # False: the rule never looks at a draft, so none is made
    num_actions: int = 2

    def decide(self, obs: Observation) -> np.ndarray:
        raise NotImplementedError

    def decide_with_scores(self, obs: Observation) -> tuple[np.ndarray, np.ndarray | None]:
        """Actions, and the escalation scores behind them when the rule has scores."""
        return self.decide(obs), None

    def describe(self) -> str:
        return self.name


@register("small_only")
class SmallOnly(RoutingRule):
    def decide(self, obs: Observation) -> np.ndarray:
        return np.zeros(len(obs.features), dtype=np.int64)


@register("large_only")
class LargeOnly(RoutingRule):
    """The large model alone (no drafts): the cost every budget is normalized against."""

    drafts = False

    def decide(self, obs: Observation) -> np.ndarray:
        return np.full(len(obs.features), self.num_actions - 1, dtype=np.int64)


class ThresholdRule(RoutingRule):
    # Operating points of the rule's own; empty: the evaluation sets thresholds at quantiles of
    # the small-only trajectory's scores.
    thresholds: ClassVar[tuple[float, ...]] = ()

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = float(threshold)

    def scores(self, obs: Observation) -> np.ndarray:
        raise NotImplementedError

    def decide(self, obs: Observation) -> np.ndarray:
        return self.decide_with_scores(obs)[0]

    def decide_with_scores(self, obs: Observation) -> tuple[np.ndarray, np.ndarray]:
        scores = self.scores(obs)
        escalated = self.escalating(scores, np.asarray([self.threshold])) > 0
        actions = np.where(escalated, self.num_actions - 1, 0).astype(np.int64)
        return actions, scores

    @staticmethod
    def escalating(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
        """For each score, how many of the ascending `thresholds` escalate its draft: every
        threshold at or below the score (a NaN score: none). The one definition of a threshold
        decision, for one threshold (`decide_with_scores`) and for many at once
        (`Controller.run_thresholds`)."""
        scores = np.asarray(scores, dtype=np.float64)
        return np.where(np.isnan(scores), 0, np.searchsorted(thresholds, scores, side="right"))

    def decides_by_score_alone(self) -> bool:
        """Is every decision `scores(obs) >= threshold`, with scores that do not depend on the
        threshold or on earlier decisions? Then the runs of many thresholds share each problem's
        trajectory up to the first step whose score falls between them
        (`Controller.run_thresholds`)."""
        return True

    def with_threshold(self, threshold: float) -> ThresholdRule:
        """The same rule at another operating point."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__, threshold=float(threshold))
        return clone

    def describe(self) -> str:
        return f"{self.name}@{self.threshold:.4g}"


@register("random")
class RandomRule(ThresholdRule):
    """Escalates a random fraction p of steps; the draw depends only on (problem, step, seed)."""

    def __init__(self, p: float | None = None, seed: int = 0, threshold: float = 0.5) -> None:
        super().__init__(1.0 - p if p is not None else threshold)
        self.seed = seed

    def scores(self, obs: Observation) -> np.ndarray:
        return np.asarray(
            [
                _draw(self.seed, problem_id, step)
                for problem_id, step in zip(obs.problem_ids, obs.step_indices, strict=True)
            ]
        )


@register("confidence_threshold")
class ConfidenceThreshold(ThresholdRule):
    _column = FEATURE_NAMES.index("draft/mean_prob")

    def scores(self, obs: Observation) -> np.ndarray:
        return 1.0 - obs.features[:, self._column].astype(np.float64)


@register("calculator_confidence")
class CalculatorConfidence(ConfidenceThreshold):
    """The confidence rule with a calculator in front: a draft whose written arithmetic is wrong
    (`draft/arithmetic_error`) outranks every draft whose arithmetic holds or cannot be checked,
    and within each group the less sure draft ranks higher. The handcrafted counterpart of a
    policy that reads the same feature."""

    _calculator = FEATURE_NAMES.index("draft/arithmetic_error")

    def scores(self, obs: Observation) -> np.ndarray:
        contradicted = obs.features[:, self._calculator].astype(np.float64)
        return (contradicted + super().scores(obs)) / 2.0


@register("large_likelihood")
class LargeLikelihood(ThresholdRule):
    needs_verifier = True

    def scores(self, obs: Observation) -> np.ndarray:
        if obs.verifier_mean_logprob is None:
            raise ValueError("large_likelihood needs the verifier's scores in the observation")
        return 1.0 - np.exp(obs.verifier_mean_logprob)


@register("first_token_entropy")
class FirstTokenEntropy(ThresholdRule):
    """Escalates a draft whose first token the small model was unsure of: GlimpRouter's signal,
    the entropy of the step's first token (`Observation.first_token_entropy`). GlimpRouter stops
    after that token; here, like every drafting rule, the whole draft is made and paid for."""

    def scores(self, obs: Observation) -> np.ndarray:
        if obs.first_token_entropy is None:
            raise ValueError(
                "first_token_entropy needs each draft's first-token entropy in the observation "
                "(Controller.observe fills it)"
            )
        return np.asarray(obs.first_token_entropy, dtype=np.float64)


def _draw(*parts: object) -> float:
    """A uniform draw in [0, 1) fixed by `parts` (no state: the same inputs, the same draw)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@register("oracle")
class OracleRule(ThresholdRule):
    """Escalates the drafts the testbed's step grader marks wrong (in a share of problems)."""

    # Its own operating points: repair 20 %, 40 %, ... of the problems, then every one.
    thresholds: ClassVar[tuple[float, ...]] = (0.8, 0.6, 0.4, 0.2, 1e-9)

    def __init__(self, threshold: float = 1e-9, seed: int = 0, repairs: int | None = None) -> None:
        """`repairs`: escalate at most this many wrong drafts per problem (None: all of them);
        the testbed report's repair rate escalates only the first."""
        super().__init__(threshold)
        self.seed = seed
        self.repairs = repairs
        self._repaired: dict[str, int] = {}

    def scores(self, obs: Observation) -> np.ndarray:
        from pipeline.testbed.tasks import grade_step

        if not obs.draft_texts:
            raise ValueError("the oracle needs the drafts' texts in the observation")
        scores = np.zeros(len(obs.draft_texts))
        for i, (question, previous, draft) in enumerate(
            zip(obs.questions, obs.steps_so_far, obs.draft_texts, strict=True)
        ):
            if not grade_step(question, list(previous), draft):
                scores[i] = 1.0 - _draw(self.seed, obs.problem_ids[i])
        return scores

    def with_threshold(self, threshold: float) -> OracleRule:
        clone = super().with_threshold(threshold)
        clone._repaired = {}  # a new run counts its own repairs
        return clone

    def decides_by_score_alone(self) -> bool:
        return self.repairs is None  # a repair cap counts the run's earlier escalations

    def decide_with_scores(self, obs: Observation) -> tuple[np.ndarray, np.ndarray]:
        actions, scores = super().decide_with_scores(obs)
        if self.repairs is not None:
            for i in np.flatnonzero(actions):
                done = self._repaired.get(obs.problem_ids[i], 0)
                if done >= self.repairs:
                    actions[i] = 0
                else:
                    self._repaired[obs.problem_ids[i]] = done + 1
        return actions, scores


@register("prm_threshold")
class PRMThreshold(ThresholdRule):
    """RSD/TRIM-style: escalate a draft the process reward model doubts. The score is
    1 − p(right), so threshold 0 escalates every draft and a threshold above 1 none."""

    needs_prm = True

    def scores(self, obs: Observation) -> np.ndarray:
        if obs.prm_step_score is None:
            raise ValueError("prm_threshold needs the PRM's scores in the observation")
        return 1.0 - np.asarray(obs.prm_step_score, dtype=np.float64)


@register("policy")
class PolicyRule(ThresholdRule):
    """A `RouterPolicy` (loaded from a folder, or the hand-set linear one) escalating when its
    p(escalate) ≥ threshold: the κ that calibration chooses per operating point."""

    def __init__(self, policy=None, threshold: float = 0.5) -> None:
        from pipeline.policy import load_policy

        super().__init__(threshold)
        if policy is None or isinstance(policy, str | Path):
            policy = load_policy(policy)
        self.policy = policy
        self.num_actions = 2  # p(escalate) lumps every larger model; the threshold picks the top

    def scores(self, obs: Observation) -> np.ndarray:
        return self.policy.escalation_probability(obs.features).numpy().astype(np.float64)
