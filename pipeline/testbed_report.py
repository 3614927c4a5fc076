"""Measure the testbed's routing signal on real vLLM, through the shared controller.

- Each end of the ladder solves the held-out problems alone (rules `small_only`, `large_only`),
  one step at a time (greedy, stop at the step separator, logprobs on). Every generated step is
  graded against the problem's operations (`tasks.grade_step`), which gives step-level labels;
  the AUROC of "minus the mean token logprob of the step" for "this step is wrong" says how much
  of the small model's error its own confidence shows.
- The **repair rate**: of the problems the small model fails, the share that come out right when
  only its first wrong step is escalated (`oracle` with `repairs=1`). High means the small
  model's errors are local: one large step puts it back on track.
- The `oracle` curve (every wrong draft escalated, in a growing share of problems) and its
  normalized cost at the large model's accuracy minus one point, under every cost model.

`target_checks` holds each measure against the target the pair was built to meet (the
`steproute testbed report` table; tests/testbed check the committed pair against the same ones).

All numbers are TESTBED numbers.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from pipeline.config import ExperimentConfig
from pipeline.controller import Controller
from pipeline.data import Problem
from pipeline.engines.cache import StepCache
from pipeline.metrics import auroc
from pipeline.rules import make_rule
from pipeline.testbed.tasks import grade_step
from pipeline.trajectory import ReasoningState

log = logging.getLogger(__name__)

__all__ = [
    "AUROC_BAND",
    "COST_RATIO_MIN",
    "LARGE_ACCURACY_MIN",
    "REPAIR_RATE_MIN",
    "SMALL_ACCURACY_BAND",
    "ModelReport",
    "TargetCheck",
    "TestbedReport",
    "measure",
    "target_checks",
]

# Routing-signal targets of the testbed (see pipeline/testbed/models/MODEL_CARD.md).
SMALL_ACCURACY_BAND = (0.50, 0.75)
LARGE_ACCURACY_MIN = 0.96
AUROC_BAND = (0.65, 0.85)
COST_RATIO_MIN = 4.0
REPAIR_RATE_MIN = 0.60


@dataclass
class ModelReport:
    name: str
    problems: int
    accuracy: float
    step_accuracy: float
    step_error_auroc: float
    steps: int


@dataclass
class TestbedReport:
    models: dict[str, ModelReport]
    repair_rate: float  # of the small model's failures, repaired by escalating its first wrong step
    repairable: int  # the small model's failures the repair rate is measured on
    oracle_accuracy: float  # every wrong draft escalated
    # Normalized cost at which the oracle first reaches large accuracy − 1 point, per cost model.
    oracle_cost_at_large: dict[str, float] = field(default_factory=dict)
    cost_ratio: float = math.nan  # large/small parameters: the per-token flops ratio


def _model_report(name: str, states: list[ReasoningState], controller: Controller) -> ModelReport:
    correct, scores, wrong = 0, [], []
    for state in states:
        correct += controller.is_correct(state)
        texts = [step.text for step in state.steps]
        for index, step in enumerate(state.steps):
            wrong.append(not grade_step(state.problem.question, texts[:index], step.text))
            scores.append(-step.mean_logprob)
    return ModelReport(
        name=name,
        problems=len(states),
        accuracy=correct / len(states),
        step_accuracy=1 - sum(wrong) / len(wrong),
        step_error_auroc=auroc(scores, wrong),
        steps=len(wrong),
    )


async def measure(
    cfg: ExperimentConfig, problems: list[Problem], engines: dict | None = None
) -> TestbedReport:
    """Solve `problems` with each end of the ladder, the first-step repair and the oracle curve,
    all through the shared controller and the evaluation harness, so `steproute evaluate`
    reproduces these numbers. Engines are started in this process unless given."""
    from pipeline.engines.launch import engine_pool
    from pipeline.evaluation import evaluate_with, summarize

    cache = StepCache()  # in memory: the oracle curve's small_only and large_only runs are lookups
    small, large = cfg.models[0], cfg.models[-1]
    async with engine_pool(cfg.models, use_ray=False, cache=cache, engines=engines) as live:
        controller = Controller(cfg, live)
        concurrency = cfg.evaluation.concurrency
        models = {}
        ends = {}
        for rule, model in (("small_only", small), ("large_only", large)):
            ends[rule] = await controller.run(problems, make_rule(rule), concurrency=concurrency)
            models[model.name] = _model_report(model.name, ends[rule], controller)
        failed = [s.problem for s in ends["small_only"] if not controller.is_correct(s)]
        repaired = await controller.run(
            failed, make_rule("oracle", repairs=1), concurrency=concurrency
        )
        # The oracle curve; its small_only and large_only runs come from the step cache.
        results, _ = await evaluate_with(
            cfg, controller, problems, ["small_only", "large_only", "oracle"]
        )
        points, summary = summarize(results)
        row = summary.set_index("rule").loc["oracle"]
        oracle_points = points[points.rule == "oracle"]
        positive = oracle_points[oracle_points.threshold > 0]
        every_wrong_draft = positive.loc[positive.threshold.idxmin()]
        return TestbedReport(
            models=models,
            repair_rate=sum(controller.is_correct(s) for s in repaired) / max(1, len(failed)),
            repairable=len(failed),
            oracle_accuracy=float(every_wrong_draft.accuracy),
            oracle_cost_at_large={
                key.split("/", 1)[1]: float(row[key])
                for key in summary.columns
                if key.startswith("cost_at_large_accuracy/")
            },
            cost_ratio=(
                large.cost.parameters / small.cost.parameters
                if large.cost.parameters and small.cost.parameters
                else math.nan
            ),
        )


@dataclass(frozen=True)
class TargetCheck:
    """One measure of the report against the testbed's target for it."""

    measure: str
    value: str  # formatted as the report shows it
    target: str
    met: bool


def target_checks(report: TestbedReport, small: str, large: str) -> list[TargetCheck]:
    """Each routing-signal measure of `report` against its target; `small` and `large` name the
    ends of the ladder."""
    s, g = report.models[small], report.models[large]
    return [
        TargetCheck(
            f"{small} problem accuracy",
            f"{s.accuracy:.1%}",
            "50-75 %",
            SMALL_ACCURACY_BAND[0] <= s.accuracy <= SMALL_ACCURACY_BAND[1],
        ),
        TargetCheck(
            f"{large} problem accuracy",
            f"{g.accuracy:.1%}",
            ">= 96 %",
            g.accuracy >= LARGE_ACCURACY_MIN,
        ),
        TargetCheck(
            f"{small} step-error AUROC of -mean logprob",
            f"{s.step_error_auroc:.3f}",
            "0.65-0.85",
            AUROC_BAND[0] <= s.step_error_auroc <= AUROC_BAND[1],
        ),
        TargetCheck(
            "per-step cost ratio large/small (parameters)",
            f"{report.cost_ratio:.2f}x",
            ">= 4x",
            report.cost_ratio >= COST_RATIO_MIN,
        ),
        TargetCheck(
            f"repair rate, first wrong step escalated (n={report.repairable})",
            f"{report.repair_rate:.1%}",
            ">= 60 %",
            report.repair_rate >= REPAIR_RATE_MIN,
        ),
    ]
