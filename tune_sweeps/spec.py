"""The sweep spec: which training knobs to vary, how to search them, and with what resources.

A YAML file beside the experiment config (e.g. `configs/sweeps/testbed_small.yaml`):

    name: testbed-small
    iterations: 8                      # PPO iterations per trial
    axes:
      cost_weight: {loguniform: [0.1, 0.6]}
      seed: {grid: [0, 1]}
    search: {algorithm: random, num_samples: 6}
    scheduler: {asha: {metric: rollout/objective, mode: max, grace_period: 2}}
    metric: calibration/apgr           # what "best" means after calibration
    resources: {cpus_per_trial: 1, max_concurrent_trials: 2}

Axes set training keys (`cost_weight`, `lr`, `entropy_coeff`, `gae_lambda`,
`initial_escalation`, `train_batch_size`, `seed`, `warm_start_problems`, `warm_start_epochs`,
`ppo_iterations` — which replaces the spec's `iterations` for its trials, 0 keeping the warm
start as it is) or `budget`, which turns on dual ascent toward that budget. A spec that names an unknown axis, a sampler that cannot be searched by the
chosen algorithm, or an impossible range fails with `SweepSpecError` before any trial starts.

`metric` ranks the calibrated trials; it is one of `FINAL_METRICS`, which each trial reports
once after calibration, all measured on the calibration split: `calibration/apgr` and
`calibration/auc` of the policy's curve, `calibration/accuracy` and
`calibration/cost_normalized` at the chosen operating point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.config import read_yaml_mapping

__all__ = [
    "AXES",
    "FINAL_METRICS",
    "LOWER_IS_BETTER",
    "INTEGER_AXES",
    "TRAINING_METRICS",
    "Axis",
    "FinalMetric",
    "SweepSpec",
    "SweepSpecError",
    "load_sweep",
]

# Axis name → the experiment config key it sets.
AXES: dict[str, tuple[str, str]] = {
    "cost_weight": ("training", "cost_weight"),
    "lr": ("training", "lr"),
    "entropy_coeff": ("training", "entropy_coeff"),
    "gae_lambda": ("training", "gae_lambda"),
    "initial_escalation": ("training", "initial_escalation"),
    "train_batch_size": ("training", "train_batch_size"),
    "seed": ("training", "seed"),
    "ppo_iterations": ("training", "iterations"),  # overrides the spec's `iterations`
    "warm_start_problems": ("training", "warm_start_problems"),
    "warm_start_epochs": ("training", "warm_start_epochs"),
    "budget": ("routing", "budget"),
}
INTEGER_AXES = frozenset(
    {"seed", "train_batch_size", "ppo_iterations", "warm_start_problems", "warm_start_epochs"}
)
# Reported by every training iteration (ASHA can act on these).
TRAINING_METRICS = (
    "rollout/objective",  # accuracy − λ·cost per problem: the per-problem reward's mean
    "rollout/episode_return_mean",
    "rollout/accuracy",
    "rollout/cost_normalized",
    "rollout/escalation_rate",
)
# Reported once per trial, after calibration, all on the calibration split: APGR and AUC of
# the policy's curve, accuracy and normalized cost at the chosen operating point, and the
# normalized cost at which the curve first reaches large-only accuracy minus one point (under
# the config's cost model, and under each cost model: `tokens` is TRIM's large-model tokens).
FinalMetric = Literal[
    "calibration/apgr",
    "calibration/auc",
    "calibration/accuracy",
    "calibration/cost_normalized",
    "calibration/cost_at_large",
    "calibration/cost_at_large/flops",
    "calibration/cost_at_large/price",
    "calibration/cost_at_large/tokens",
]
FINAL_METRICS: tuple[str, ...] = get_args(FinalMetric)
# Of those, the ones where less is better (costs); the others are better when larger.
LOWER_IS_BETTER = frozenset(m for m in FINAL_METRICS if m.startswith("calibration/cost"))


class SweepSpecError(ValueError):
    """The sweep spec is invalid; the message names the key and the fix."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Axis(_Frozen):
    grid: list[float] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _one_sampler(self) -> Axis:
        given = [k for k in ("grid", "uniform", "loguniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"an axis takes exactly one of grid / uniform / loguniform (got {given})"
            )
        if self.grid is not None and not self.grid:
            raise ValueError("grid must list at least one value")
        for name in ("uniform", "loguniform"):
            bounds = getattr(self, name)
            if bounds is not None:
                low, high = bounds
                if not low < high:
                    raise ValueError(f"{name} needs low < high (got {list(bounds)})")
                if name == "loguniform" and low <= 0:
                    raise ValueError(f"loguniform needs low > 0 (got {low})")
        return self

    def tune_domain(self):
        from ray import tune

        if self.grid is not None:
            return tune.grid_search(list(self.grid))
        if self.uniform is not None:
            return tune.uniform(*self.uniform)
        return tune.loguniform(*self.loguniform)


class Search(_Frozen):
    algorithm: Literal["grid", "random", "optuna"] = "grid"
    num_samples: int = Field(1, ge=1, description="grid: repeats of the grid; else: trials.")


class Asha(_Frozen):
    metric: str = "rollout/objective"
    mode: Literal["max", "min"] = "max"
    grace_period: int = Field(2, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class Scheduler(_Frozen):
    asha: Asha | None = None


class Resources(_Frozen):
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    max_concurrent_trials: int = Field(2, ge=1)


class SweepSpec(_Frozen):
    name: str = Field(..., min_length=1)
    iterations: int = Field(..., ge=1, description="PPO iterations per trial.")
    axes: dict[str, Axis] = Field(..., min_length=1)
    search: Search = Field(default_factory=Search)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    metric: FinalMetric = "calibration/apgr"
    mode: Literal["max", "min"] = "max"
    resources: Resources = Field(default_factory=Resources)
    calibration_limit: int | None = Field(
        None, ge=1, description="Calibrate each trial on the first N calibration problems."
    )
    calibration_method: Literal["quantile", "ltt"] | None = Field(
        None, description="Override calibration.method (LTT certifies little on few problems)."
    )
    front_limit: int | None = Field(
        None, ge=1, description="Evaluate the Pareto front on the first N test problems."
    )

    @field_validator("metric", mode="before")
    @classmethod
    def _renamed_metric(cls, metric: Any) -> Any:
        # Specs written before the final metrics were namespaced name them bare ("apgr").
        renamed = f"calibration/{metric}"
        if renamed in FINAL_METRICS:
            raise ValueError(
                f"metric '{metric}' is now named '{renamed}' (it is measured on the "
                f"calibration split): write `metric: {renamed}`"
            )
        return metric

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        unknown = sorted(set(self.axes) - set(AXES))
        if unknown:
            raise ValueError(f"unknown axis {unknown}; known axes: {sorted(AXES)}")
        wanted = "min" if self.metric in LOWER_IS_BETTER else "max"
        if self.mode != wanted:
            raise ValueError(
                f"metric '{self.metric}' is better when {'lower' if wanted == 'min' else 'higher'}: "
                f"write `mode: {wanted}`"
            )
        if self.search.algorithm == "grid":
            sampled = sorted(n for n, a in self.axes.items() if a.grid is None)
            if sampled:
                raise ValueError(
                    f"search 'grid' needs grid axes; {sampled} are sampled: use search "
                    "'random' or 'optuna', or give them a grid"
                )
        if self.search.algorithm == "optuna":
            grids = sorted(n for n, a in self.axes.items() if a.grid is not None)
            if grids:
                raise ValueError(
                    f"search 'optuna' samples every axis; {grids} are grids: use uniform / "
                    "loguniform ranges, or search 'grid'"
                )
        asha = self.scheduler.asha
        if asha is not None:
            if asha.metric not in TRAINING_METRICS:
                raise ValueError(
                    f"scheduler.asha.metric '{asha.metric}' is not reported every iteration; "
                    f"choose one of {list(TRAINING_METRICS)}"
                )
            if asha.grace_period >= self.iterations:
                raise ValueError(
                    f"scheduler.asha.grace_period ({asha.grace_period}) must be below "
                    f"iterations ({self.iterations}), or ASHA can stop nothing"
                )
        for name in ("seed", "train_batch_size"):
            axis = self.axes.get(name)
            if axis is not None and (axis.grid is None or any(v != int(v) for v in axis.grid)):
                raise ValueError(f"axis '{name}' takes a grid of whole numbers")
        return self

    @property
    def num_trials(self) -> int:
        """Trials a complete sweep runs: the grid's size times num_samples."""
        size = 1
        for axis in self.axes.values():
            size *= len(axis.grid) if axis.grid is not None else 1
        return size * self.search.num_samples

    def param_space(self) -> dict[str, Any]:
        return {name: axis.tune_domain() for name, axis in self.axes.items()}


def load_sweep(path: str | Path) -> SweepSpec:
    raw = read_yaml_mapping(
        Path(path), SweepSpecError, "sweep spec", "e.g. configs/sweeps/testbed_small.yaml"
    )
    return parse_sweep(raw, source=str(path))


def parse_sweep(raw: dict[str, Any], source: str = "<dict>") -> SweepSpec:
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            key = ".".join(str(p) for p in error["loc"]) or "<top level>"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key; remove it or fix its spelling"
            lines.append(f"{source}: '{key}': {message}")
        raise SweepSpecError("invalid sweep spec:\n  " + "\n  ".join(lines)) from None
