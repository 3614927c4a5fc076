"""Experiment configuration: pydantic models loaded from YAML with `${ENV:default}` interpolation.

One `ExperimentConfig` describes a whole run: the model ladder (small first, large last), the
benchmark, the routing problem, training, calibration, tracking and where outputs go. Every model
is frozen and forbids unknown keys, so a typo in a YAML file fails at load time with one error
that names the key, the file and the fix, instead of being silently ignored.

Relative paths in a config (data sources, local model folders, output folders) are resolved
against the current working directory: run commands from the repository root.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "AuthConfig",
    "CalibrationConfig",
    "ConfigError",
    "CostConfig",
    "DatasetConfig",
    "EndpointConfig",
    "EvaluationConfig",
    "ExperimentConfig",
    "ModelConfig",
    "ResourcesConfig",
    "RoutingConfig",
    "SamplingConfig",
    "ServeConfig",
    "SplitFractions",
    "TrackingConfig",
    "TrainingConfig",
    "interpolate_env",
    "local_paths_absolute",
    "merge_dicts",
    "load_config",
]


class ConfigError(ValueError):
    """A configuration file could not be read or is invalid. The message says where and how to fix."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class ResourcesConfig(_Frozen):
    """What the Ray actor hosting an engine asks for."""

    num_gpus: float = Field(0.0, ge=0, description="GPUs per engine replica (0 on CPU).")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs to shard the model over.")
    num_cpus: float = Field(1.0, ge=0, description="CPU cores reserved for the engine actor.")
    custom_resources: dict[str, float] = Field(
        default_factory=dict, description="Ray custom resources, e.g. {small_llm: 1}."
    )
    cpu_cores: tuple[int, ...] | None = Field(
        None,
        description="CPU cores (Linux ids) that the process hosting the engine runs on, every "
        "thread of it, vLLM's engine core process too; unset: wherever the OS puts them. Where "
        "engines share a few cores, giving each its own keeps the draft engine's stepping thread "
        "from being moved or preempted (benchmarks/RESULTS.md, 'Rollout, pinned engines'). Applies "
        "to engines in their own process (Ray actors, Serve replicas), on each node; replicas of "
        "one model on a node share the cores.",
    )

    @field_validator("cpu_cores")
    @classmethod
    def _distinct_cores(cls, cores: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if cores is not None and (not cores or min(cores) < 0 or len(set(cores)) != len(cores)):
            raise ValueError(f"cpu_cores must be distinct core ids >= 0, at least one: {cores}")
        return cores


class SamplingConfig(_Frozen):
    """How one reasoning step is generated."""

    temperature: float = Field(0.0, ge=0, description="0 = greedy, which makes steps cacheable.")
    max_step_tokens: int = Field(256, ge=1, description="Cap on the tokens of one step.")
    n_logprobs: int = Field(5, ge=0, le=20, description="Top-k logprobs returned per token.")
    seed: int | None = Field(0, description="Sampling seed (makes sampled steps cacheable).")


class CostConfig(_Frozen):
    """Inputs of the cost models: parameter count for `flops`, per-token prices for `price`."""

    parameters: float | None = Field(None, gt=0, description="Model parameters (for flops).")
    input_price_per_token: float | None = Field(
        None, ge=0, description="Price of a prompt token the model has not processed yet."
    )
    cached_input_price_per_token: float | None = Field(
        None, ge=0, description="Price of a prompt token read from cache (default: input price)."
    )
    output_price_per_token: float | None = Field(
        None, ge=0, description="Price of an output token."
    )


class EndpointConfig(_Frozen):
    """How steproute talks to an OpenAI-compatible server (`engine: openai`)."""

    protocol: Literal["completions", "chat"] = Field(
        "completions",
        description="completions: /v1/completions with token-id prompts (vllm serve); chat: "
        "/v1/chat/completions with the question and the solution so far as messages.",
    )
    server: Literal["vllm", "openai"] = Field(
        "vllm",
        description="vllm: the server takes vLLM's extra request fields (token ids back, the stop "
        "string kept, continue_final_message); openai: standard OpenAI fields only.",
    )
    prefill: bool = Field(
        True,
        description="chat: send the solution so far as a partial assistant message that the "
        "server continues (vLLM continue_final_message); false: a next-step instruction.",
    )
    max_concurrent_requests: int | None = Field(
        None, ge=1, description="Requests in flight to this server at most (unset: no limit)."
    )
    tokens_per_minute: int | None = Field(
        None,
        ge=1,
        description="Prompt + completion tokens sent per minute at most (unset: no limit).",
    )

    @model_validator(mode="after")
    def _prefill_needs_vllm(self) -> EndpointConfig:
        if self.protocol == "chat" and self.prefill and self.server != "vllm":
            raise ValueError(
                "endpoint.prefill: an 'openai' server's chat API does not continue a partial "
                "assistant message; set prefill: false (a next-step instruction) or server: vllm"
            )
        return self


class ModelConfig(_Frozen):
    """One model of the ladder. `name` is the id used in reports, routing actions and Serve."""

    name: str = Field(..., min_length=1, description="Short id, e.g. 'small' or 'large'.")
    path: str = Field(..., min_length=1, description="Hugging Face id or local folder.")
    engine: Literal["vllm", "openai"] = "vllm"
    revision: str | None = None
    dtype: str = Field("auto", description="vLLM dtype: auto, float32, bfloat16, float16.")
    max_model_len: int | None = Field(None, ge=16)
    kv_cache_memory_bytes: int | None = Field(None, gt=0, description="Explicit KV cache size.")
    block_size: int | None = Field(
        None, ge=1, description="KV cache block size; prefix caching reuses whole blocks only."
    )
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    enforce_eager: bool | None = Field(
        None,
        description="vLLM enforce_eager. Unset: eager on CPU (no torch.compile warm-up: an "
        "engine starts in seconds), compiled with CUDA graphs on GPU.",
    )
    engine_core: Literal["process", "thread"] | None = Field(
        None,
        description="Where vLLM's engine core runs: 'process' (vLLM's AsyncLLM: a process of "
        "its own, overlapping the next forward pass with the front end's output work) or "
        "'thread' (in the hosting process, stepped by one thread: one busy process per engine "
        "instead of two, no serialization between them). Unset: a process on GPU, a thread on "
        "CPU.",
    )
    log_stats: bool = Field(
        True,
        description="vLLM's engine statistics: per-step bookkeeping, and a line in the host's "
        "log every 10 s (throughput, running and waiting requests, KV-cache use). Off: neither.",
    )
    api_base: str | None = Field(None, description="OpenAI-compatible base URL (engine: openai).")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    endpoint: EndpointConfig = Field(default_factory=EndpointConfig)
    tokenizer: str | None = Field(
        None,
        description="Hugging Face tokenizer for this model's contexts (default: path). A closed "
        "model has none of its own: name an open one; its costs come from the server's usage.",
    )
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    cost: CostConfig = Field(default_factory=CostConfig)

    @model_validator(mode="after")
    def _engine_needs(self) -> ModelConfig:
        if self.engine == "openai" and not self.api_base:
            raise ValueError("engine 'openai' needs api_base (the server's /v1 URL)")
        if self.resources.tensor_parallel_size > 1 and self.resources.num_gpus == 0:
            raise ValueError("tensor_parallel_size > 1 needs num_gpus > 0")
        return self


def _absolute_if_local(value: str | None) -> str | None:
    """`value` as an absolute path when it names something on this machine, else None."""
    return str(Path(value).resolve()) if value and Path(value).exists() else None


def local_paths_absolute(model: ModelConfig) -> ModelConfig:
    """`model` with a local folder made absolute, for code that runs in another directory (Ray
    actors, Serve replicas, Tune trials). A hosted model's weights are its `path`; a model behind
    an endpoint keeps `path` as written (it is the server's name for the model), and a local
    folder there becomes its `tokenizer`."""

    local = _absolute_if_local
    if model.engine != "openai":
        return model.model_copy(update={"path": local(model.path) or model.path})
    tokenizer = local(model.tokenizer) or model.tokenizer or local(model.path)
    return model.model_copy(update={"tokenizer": tokenizer})


class PRMConfig(ModelConfig):
    """A process reward model: scores a draft step (p(step is right)) for `prm_threshold`. A vLLM
    pooling model with STEP pooling, as vLLM serves Qwen2.5-Math-PRM (`Qwen2ForProcessRewardModel`):
    it reads the small model's context plus the draft, with the step tag appended unless the draft
    already ends with it (the testbed PRM's tag is the newline that ends a step), and answers at
    that tag. It shares the
    small model's tokenizer (the testbed's; Qwen2.5's for Qwen2.5-Math). Its calls are charged
    like any model's: a forward pass over what it has not read in this trajectory."""

    name: str = Field("prm", min_length=1, description="Id in reports and cost breakdowns.")
    step_tag_id: int = Field(
        ..., ge=0, description="Token id the PRM answers at (Qwen2.5-Math-PRM: 151651 <extra_0>)."
    )

    @model_validator(mode="after")
    def _pooling_needs_vllm(self) -> PRMConfig:
        if self.engine != "vllm":
            raise ValueError(
                f"prm: engine '{self.engine}' cannot host a process reward model: it is a vLLM "
                "pooling model (STEP pooling), and OpenAI-compatible APIs have no process-reward "
                "pooling endpoint; use engine: vllm"
            )
        return self


class SplitFractions(_Frozen):
    """How one source is divided into train / calibration / test, by a hash of each problem's
    normalized question (the testbed's: of its id). Used when the dataset has no training source."""

    train: float = Field(0.6, ge=0, le=1)
    calibration: float = Field(0.2, ge=0, le=1)
    test: float = Field(0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitFractions:
        total = self.train + self.calibration + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1 (got {total:g})")
        return self


DatasetName = Literal["gsm8k", "math500", "omnimath", "omnimath_rule", "testbed"]

_TRAINING_ONLY_FIELDS = (
    "train_file_split",
    "train_hf_config",
    "train_hf_split",
    "train_name",
    "calibration_fraction",
)
"""DatasetConfig fields that only a training source reads."""


class DatasetConfig(_Frozen):
    """The benchmark and its splits. Two protocols:

    - with a training source (`train_source` or `train_hf_id`, the standard protocol for a
      benchmark with a train set): train and calibration are a hashed split of the training
      source (`calibration_fraction` of it held out), test is the WHOLE main source, and a
      training problem whose question the test source also holds is dropped;
    - without one: the main source is split three ways by `splits`.
    """

    name: DatasetName
    source: str | None = Field(None, description="Local file or folder with the benchmark.")
    file_split: str = Field(
        "test", description="Which file of a folder source (GSM8K, MATH: test/train)."
    )
    hf_id: str | None = Field(
        None, description="Hugging Face dataset id, used if source is absent."
    )
    hf_config: str | None = None
    hf_split: str = "test"
    train_source: str | None = Field(
        None, description="Local file or folder with the training problems (standard protocol)."
    )
    train_file_split: str = Field(
        "train", description="Which file of a folder train_source (GSM8K: train)."
    )
    train_hf_id: str | None = Field(
        None,
        description="Hugging Face id of the training problems, used if train_source is absent.",
    )
    train_hf_config: str | None = None
    train_hf_split: str = "train"
    train_name: DatasetName | None = Field(
        None,
        description="Record format of the training source if another benchmark's (default: name).",
    )
    calibration_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of the training source held out for calibration."
    )
    splits: SplitFractions = Field(
        default_factory=SplitFractions,
        description="Three-way split of source (no training source).",
    )
    seed: int = 0
    limit: int | None = Field(None, ge=1, description="Keep at most this many problems.")
    testbed: dict[str, Any] = Field(
        default_factory=dict, description="Generator knobs when name is 'testbed'."
    )

    @model_validator(mode="after")
    def _has_a_source(self) -> DatasetConfig:
        if self.name != "testbed" and not (self.source or self.hf_id):
            raise ValueError(f"dataset '{self.name}' needs a local `source` or an `hf_id`")
        return self

    @model_validator(mode="after")
    def _one_protocol(self) -> DatasetConfig:
        # A field that the chosen protocol ignores is an error, not a silent no-op: a config
        # that says `splits: ...` next to a training source would not do what it reads as.
        # Values are compared with the defaults, not checked for presence, so that a dumped
        # config (every field written out) loads back.
        has_training = bool(self.train_source or self.train_hf_id)
        if has_training and self.name == "testbed":
            raise ValueError(
                "the testbed generates its problems and splits them with `splits`; "
                "remove train_source / train_hf_id"
            )
        if has_training and self.splits != SplitFractions():
            raise ValueError(
                "`splits` divides one source three ways; with a training source, train and "
                "calibration come from it (`calibration_fraction`) and test is all of `source`: "
                "remove `splits`"
            )
        fields = type(self).model_fields
        stray = [f for f in _TRAINING_ONLY_FIELDS if getattr(self, f) != fields[f].default]
        if stray and not has_training:
            raise ValueError(
                f"fields that apply only with a training source: {', '.join(stray)}; set "
                "train_source (or train_hf_id) or remove them"
            )
        if self.train_name == "testbed":
            raise ValueError("train_name: the testbed cannot be a training source")
        return self

    def training_source(self) -> DatasetConfig | None:
        """The training source as a one-source config the loaders read like any benchmark
        (None without one)."""
        if not (self.train_source or self.train_hf_id):
            return None
        return DatasetConfig(
            name=self.train_name or self.name,
            source=self.train_source,
            file_split=self.train_file_split,
            hf_id=self.train_hf_id,
            hf_config=self.train_hf_config,
            hf_split=self.train_hf_split,
            seed=self.seed,
        )


CALIBRATED_RULES = (
    "policy",
    "confidence_threshold",
    "calculator_confidence",
    "large_likelihood",
    "first_token_entropy",
    "prm_threshold",
)
"""The thresholded rules `steproute calibrate` can calibrate and `steproute serve` can route
with (`routing.rule`). `random` and `oracle` are yardsticks, not routers."""


class RoutingConfig(_Frozen):
    rule: Literal[CALIBRATED_RULES] = Field(  # type: ignore[valid-type]
        "policy",
        description="The thresholded rule that `steproute calibrate` calibrates by default and "
        "`steproute serve` routes with: the learned policy, or a baseline such as prm_threshold.",
    )
    max_steps: int = Field(16, ge=1)
    max_total_tokens: int = Field(2048, ge=1)
    budget: float | None = Field(
        None, gt=0, description="Mean cost per problem as a fraction of large-only cost."
    )
    cost_model: Literal["flops", "price", "tokens"] = "flops"
    step_separator: str = "\n\n"
    draft_embedding_dim: int = Field(
        0, ge=0, le=256, description="Append a hashed text embedding of the draft (0 = off)."
    )
    prompt_length_scale: int | None = Field(
        None,
        ge=1,
        description="Prompt tokens at which the traj/prompt_length feature reaches 1 "
        "(default: max_total_tokens). Longer questions are often harder ones.",
    )


class TrainingConfig(_Frozen):
    iterations: int = Field(
        20, ge=0, description="PPO iterations (0: the warm-started policy is the result)."
    )
    lr: float = Field(3e-4, gt=0)
    gamma: float = Field(1.0, gt=0, le=1)
    gae_lambda: float = Field(
        1.0, ge=0, le=1, description="GAE λ: below 1 leans on the critic, which cuts variance."
    )
    train_batch_size: int = Field(512, ge=1)
    minibatch_size: int = Field(128, ge=1)
    num_epochs: int = Field(4, ge=1)
    hidden_sizes: tuple[int, ...] = (64, 64)
    cost_weight: float = Field(0.0, ge=0, description="Fixed λ in reward = correct − λ·cost.")
    dual_ascent: bool = Field(False, description="Update λ toward routing.budget every iteration.")
    dual_lr: float = Field(0.5, gt=0)
    entropy_coeff: float = Field(0.0, ge=0, description="PPO entropy bonus.")
    initial_escalation: float = Field(
        0.5, gt=0, lt=1, description="p(escalate) of the untrained policy."
    )
    warm_start_problems: int = Field(
        0,
        ge=0,
        description="Label the drafts of this many training problems by Monte-Carlo rollouts "
        "and fit the policy to them before PPO (pipeline.labels; 0: PPO from scratch).",
    )
    warm_start_epochs: int = Field(20, ge=1, description="Passes over the labelled drafts.")
    warm_start_lr: float = Field(3e-3, gt=0)
    warm_start_weight_decay: float = Field(
        0.0, ge=0, description="AdamW weight decay of the warm start."
    )
    standardize_features: bool = Field(
        True,
        description="Standardize the policy's inputs with statistics measured before training.",
    )
    num_env_runners: int = Field(0, ge=0)
    num_envs_per_env_runner: int = Field(1, ge=1)
    env_runner_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources per env runner, e.g. {env_runner: 1} (cluster nodes).",
    )
    concurrency: int = Field(32, ge=1, description="Problems in flight per env.")
    problems_per_slot: int = Field(
        8,
        ge=1,
        description="An env episode works through `problems_per_slot` x `concurrency` problems. "
        "Every episode ends in a drain, its last problems drafted in ever narrower engine "
        "batches; longer episodes drain less often (benchmarks/RESULTS.md, 'Rollout, longer "
        "episodes').",
    )
    sample_timeout_s: float = Field(600.0, gt=0)
    checkpoint_every: int = Field(5, ge=1)
    seed: int = 0


_RANGE_KEYS = {"from", "to", "step"}


def _escalation_fractions(value: Any, field: str) -> tuple[float, ...]:
    """Shares of first-pass drafts that escalate (`evaluation.escalation_targets`,
    `calibration.grid_targets`), sorted, each once. Items are numbers or inclusive ranges
    `{from, to, step}`: a fine κ grid reads as one line, not hundreds of numbers."""
    if not isinstance(value, (list, tuple)):
        value = [value]
    shares: set[float] = set()
    for item in value:
        if isinstance(item, dict):
            if set(item) != _RANGE_KEYS:
                raise ValueError(
                    f"{field}: a range is written {{from: A, to: B, step: S}} (got keys "
                    f"{sorted(item)})"
                )
            start, stop, step = (float(item[k]) for k in ("from", "to", "step"))
            if step <= 0 or stop < start:
                raise ValueError(f"{field}: range {item} needs step > 0 and from <= to")
            count = math.floor((stop - start) / step + 1e-9) + 1
            if count > 10_000:
                raise ValueError(f"{field}: range {item} holds {count} points (at most 10,000)")
            shares.update(round(start + i * step, 10) for i in range(count))
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            shares.add(float(item))
        else:
            raise ValueError(f"{field}: {item!r} is neither a share nor a {{from, to, step}} range")
    outside = sorted(v for v in shares if not 0 < v < 1)
    if outside:
        raise ValueError(f"{field}: shares must lie strictly between 0 and 1 (got {outside})")
    if not shares:
        raise ValueError(f"{field}: give at least one share")
    return tuple(sorted(shares))


class CalibrationConfig(_Frozen):
    budgets: tuple[float, ...] = (0.2, 0.3, 0.5, 0.7)
    method: Literal["quantile", "ltt"] = "quantile"
    delta: float = Field(0.1, gt=0, lt=1, description="Failure probability for Learn-then-Test.")
    accuracy_targets: tuple[float, ...] = Field(
        (0.99,), description="Accuracy targets as fractions of large-only accuracy."
    )
    grid_targets: tuple[float, ...] = Field(
        (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.85),
        description="κ grid: where these fractions of the policy's first-pass drafts escalate. "
        "Numbers, or ranges written {from: 0.0025, to: 0.45, step: 0.0025}.",
    )
    limit: int | None = Field(
        None,
        ge=1,
        description="Use only the first N calibration problems (and of the budget pool's).",
    )
    budget_pool: DatasetConfig | None = Field(
        None,
        description="More problems for the budget tests only: a cost needs no label, so a "
        "budget is certified on the calibration split and these together (accuracy targets on "
        "the split alone). Every problem of this source is used (`limit` keeps a subset), "
        "minus any whose question a split of `dataset` holds; their answers are not read (a "
        "file of questions alone will do: GSM8K's `question`, MATH's `problem`). They "
        "must come from the test problems' distribution, as the calibration split does.",
    )

    @field_validator("grid_targets", mode="before")
    @classmethod
    def _grid(cls, value: Any) -> tuple[float, ...]:
        return _escalation_fractions(value, "calibration.grid_targets")

    @field_validator("budgets")
    @classmethod
    def _budgets_positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(b <= 0 for b in value):
            raise ValueError("every budget must be > 0 (a fraction of large-only cost)")
        return value


class EvaluationConfig(_Frozen):
    """`steproute evaluate`: which rules, over which split, at which operating points."""

    rules: tuple[str, ...] = (
        "small_only",
        "large_only",
        "random",
        "confidence_threshold",
        "calculator_confidence",
        "large_likelihood",
        "first_token_entropy",
        "prm_threshold",  # skipped (and said so in the report) where no `prm:` is configured
        "policy",
    )
    split: Literal["train", "calibration", "test"] = "test"
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N problems.")
    escalation_targets: tuple[float, ...] = Field(
        (0.1, 0.2, 0.35, 0.5, 0.7, 0.85, 0.95),
        description="Thresholds of each thresholded rule are set where this fraction of the "
        "small-only trajectory's drafts would escalate; 0 % and 100 % are always added.",
    )
    concurrency: int = Field(64, ge=1, description="Problems in flight at once.")
    shared_trajectories: bool = Field(
        True,
        description="A thresholded rule that decides by its score alone runs every operating "
        "point in one pass: each problem is solved once per distinct trajectory, which the "
        "points share until a step's score parts them (the same rows as one run per point). "
        "false: one run per operating point, `points_in_flight` at a time.",
    )
    points_in_flight: int = Field(
        1,
        ge=1,
        description="Operating points of a thresholded rule run side by side, each with "
        "`concurrency` problems in flight (the engines batch them together), where each point "
        "has a run of its own (`shared_trajectories: false`, or a rule whose decisions depend "
        "on more than its score).",
    )
    policy: str | None = Field(
        None, description="RouterPolicy folder for the `policy` rule; unset = hand-set linear."
    )
    use_ray: bool = Field(True, description="Engines as Ray actors (False: in this process).")
    cache_dir: str | None = Field(
        None, description="Step cache folder; default <output_dir>/step_cache."
    )

    @field_validator("escalation_targets", mode="before")
    @classmethod
    def _fractions(cls, value: Any) -> tuple[float, ...]:
        return _escalation_fractions(value, "evaluation.escalation_targets")


class AuthConfig(_Frozen):
    """Bearer API keys for the Serve endpoint."""

    mode: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: on unless the endpoint is bound to a loopback address."
    )
    api_keys_env: str = Field(
        "STEPROUTE_API_KEYS", description="Environment variable with comma-separated keys."
    )
    api_keys: tuple[str, ...] = Field((), description="Keys in the config (prefer the env var).")

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare on / off as true / false.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class ServeConfig(_Frozen):
    """`steproute serve` / `serve_app`: the router behind an OpenAI-compatible endpoint."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    route_prefix: str = "/"
    ingress: Literal["proxy", "direct"] = Field(
        "proxy",
        description="proxy: Serve's HTTP proxy takes requests and hands them to the router "
        "replicas (any number, any cluster). direct: Serve's direct ingress, the one router "
        "replica answers on `port` itself, one hop less per request; for a Ray that "
        "`steproute serve` starts.",
    )
    policy: str | None = Field(
        None,
        description="RouterPolicy folder with operating_points.json; unset = <output_dir>/policy; "
        "'hand_set' = the hand-set linear policy with one operating point at kappa 0.5.",
    )
    default_model: str | None = Field(
        None, description="Model id that 'router' means; unset = the point for routing.budget."
    )
    auth: AuthConfig = Field(default_factory=AuthConfig)
    max_request_bytes: int = Field(65536, ge=1024, description="Larger bodies get 413.")
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="Longer prompts get 422; unset = half the small model's context."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Largest max_tokens a request may ask; unset = routing's cap."
    )
    max_ongoing_requests: int = Field(
        128, ge=1, description="Requests one router replica works on; more get 429."
    )
    request_timeout_s: float = Field(300.0, gt=0, description="An engine call slower fails 503.")
    drain_timeout_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM / Ctrl-C: how long requests in flight may take to finish while "
        "new ones get 503, before Serve and the engines shut down.",
    )
    router_replicas: int = Field(1, ge=1)
    router_num_cpus: float = Field(
        0.0, ge=0, description="CPUs per router replica: it mostly awaits the engines."
    )
    autoscaling: dict[str, Any] | None = Field(
        None, description="Ray Serve autoscaling_config for the router (replaces router_replicas)."
    )
    engine_replicas: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _direct_ingress_is_one_replica_at_the_root(self) -> ServeConfig:
        if self.ingress == "direct" and (
            self.router_replicas != 1 or self.autoscaling or self.route_prefix != "/"
        ):
            raise ValueError(
                "serve.ingress: direct serves one router replica on serve.port at '/'; for "
                "router_replicas > 1, autoscaling or another route_prefix use ingress: proxy"
            )
        return self


class TrackingConfig(_Frozen):
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking URI; default sqlite:///<output_dir>/mlruns.db."
    )
    experiment: str = "steproute"


class ExperimentConfig(_Frozen):
    name: str = Field(..., min_length=1)
    models: tuple[ModelConfig, ...] = Field(..., min_length=2)
    dataset: DatasetConfig
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    prm: PRMConfig | None = Field(None, description="Process reward model for prm_threshold.")
    output_dir: str = "runs/default"

    @field_validator("models")
    @classmethod
    def _unique_names(cls, value: tuple[ModelConfig, ...]) -> tuple[ModelConfig, ...]:
        names = [m.name for m in value]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique (got {names})")
        return value

    @model_validator(mode="after")
    def _cost_inputs_present(self) -> ExperimentConfig:
        where = [(f"models[{i}]", m) for i, m in enumerate(self.models)]
        for place, model in where + ([("prm", self.prm)] if self.prm else []):
            if self.routing.cost_model == "flops" and model.cost.parameters is None:
                raise ValueError(
                    f"{place} ('{model.name}'): cost model 'flops' needs cost.parameters"
                )
            if self.routing.cost_model == "price" and (
                model.cost.input_price_per_token is None
                or model.cost.output_price_per_token is None
            ):
                raise ValueError(
                    f"{place} ('{model.name}'): cost model 'price' needs "
                    "cost.input_price_per_token and cost.output_price_per_token"
                )
        return self

    @model_validator(mode="after")
    def _prm_name_is_its_own(self) -> ExperimentConfig:
        if self.prm and self.prm.name in {m.name for m in self.models}:
            raise ValueError(f"prm.name '{self.prm.name}' is also a model of the ladder; rename it")
        return self

    @model_validator(mode="after")
    def _prm_rule_needs_a_prm(self) -> ExperimentConfig:
        if self.routing.rule == "prm_threshold" and self.prm is None:
            raise ValueError(
                "routing.rule 'prm_threshold' scores each draft with a process reward model, and "
                "none is configured; fix: add a `prm:` entry or choose another routing.rule"
            )
        return self

    @property
    def engine_models(self) -> tuple[ModelConfig, ...]:
        """Every model an engine is started for: the ladder, then the PRM when one is set."""
        return self.models + ((self.prm,) if self.prm else ())

    def models_for(self, rules) -> tuple[ModelConfig, ...]:
        """The models whose engines running `rules` needs: the ladder, and the PRM when a rule
        scores drafts with it."""
        return self.engine_models if "prm_threshold" in rules else self.models

    @model_validator(mode="after")
    def _oracle_needs_the_testbed(self) -> ExperimentConfig:
        if "oracle" in self.evaluation.rules and self.dataset.name != "testbed":
            raise ValueError(
                "evaluation.rules: 'oracle' grades each draft with the testbed's step grader and "
                f"runs on the testbed only (dataset.name is '{self.dataset.name}'); remove it"
            )
        return self

    @model_validator(mode="after")
    def _budget_pool_is_a_testbed_draw_like_the_test(self) -> ExperimentConfig:
        # A testbed pool must be the same generator at another seed: other knobs draw problems
        # of another difficulty, and a budget certified on them says nothing about the test.
        pool = self.calibration.budget_pool
        if pool is None or pool.name != "testbed" or self.dataset.name != "testbed":
            return self
        sizes = ("num_problems", "seed")
        own = {k: v for k, v in self.dataset.testbed.items() if k not in sizes}
        drawn = {k: v for k, v in pool.testbed.items() if k not in sizes}
        if own != drawn:
            differ = sorted(k for k in own.keys() | drawn.keys() if own.get(k) != drawn.get(k))
            raise ValueError(
                "calibration.budget_pool.testbed: the pool must be drawn like the test problems, "
                f"with dataset.testbed's knobs and only another seed and size; {', '.join(differ)} "
                "differ"
            )
        if pool.testbed.get("seed") == self.dataset.testbed.get("seed"):  # both unset: the default
            raise ValueError(
                "calibration.budget_pool.testbed.seed: the dataset's own seed draws the dataset's "
                "own problems; give the pool a seed of its own"
            )
        return self

    def with_absolute_paths(self, models: bool = True) -> ExperimentConfig:
        """The same config with local paths (model folders, data source, outputs, step cache)
        made absolute: for code that runs in another directory (Tune trials, Serve replicas,
        Ray actors). `models=False` keeps model paths as written: the step cache keys on them."""

        def resolve(value: str | None) -> str | None:
            return _absolute_if_local(value) or value

        ladder = tuple(local_paths_absolute(m) if models else m for m in self.models)
        prm = local_paths_absolute(self.prm) if self.prm and models else self.prm
        dataset = self.dataset.model_copy(
            update={
                "source": resolve(self.dataset.source),
                "train_source": resolve(self.dataset.train_source),
            }
        )
        evaluation = self.evaluation.model_copy(
            update={"cache_dir": str(self.step_cache_dir.resolve())}
        )
        return self.model_copy(
            update={
                "models": ladder,
                "prm": prm,
                "dataset": dataset,
                "evaluation": evaluation,
                "output_dir": str(Path(self.output_dir).resolve()),
            }
        )

    @property
    def step_cache_dir(self) -> Path:
        """The step cache every stage shares: `evaluation.cache_dir`, else <output_dir>/step_cache."""
        return Path(self.evaluation.cache_dir or Path(self.output_dir) / "step_cache")

    def seed_dir(self, seed: int) -> Path:
        """Where `steproute train --seeds` puts one seed's run: <output_dir>/seeds/seed-<s>
        (its policy in `policy/`, checkpoints in `train/`)."""
        return Path(self.output_dir) / "seeds" / f"seed-{seed}"

    def rule_dir(self, rule: str) -> Path:
        """Where `steproute calibrate --rule <rule>` saves a baseline rule's operating points:
        <output_dir>/rules/<rule> (the policy's sit beside the policy)."""
        return Path(self.output_dir) / "rules" / rule

    @property
    def mlflow_uri(self) -> str:
        if self.tracking.mlflow_uri:
            return self.tracking.mlflow_uri
        return f"sqlite:///{Path(self.output_dir).resolve() / 'mlruns.db'}"


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")


def interpolate_env(value: Any, *, where: str = "<config>") -> Any:
    """Replace `${NAME}` and `${NAME:default}` in every string of a parsed YAML tree."""
    if isinstance(value, dict):
        return {k: interpolate_env(v, where=f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_env(v, where=f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ConfigError(
                f"{where}: environment variable {name} is not set and has no default; "
                f"fix: export {name}=… or write ${{{name}:default}}"
            )
        return default

    return _ENV_PATTERN.sub(substitute, value)


def _describe(error: dict[str, Any], path: str) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "<top level>"
    kind = error["type"]
    if kind == "extra_forbidden":
        fix = "remove it or fix its spelling (see pipeline/config.py for the known keys)"
        return f"unknown key '{key}' in {path}; fix: {fix}"
    if kind == "missing":
        return f"missing required key '{key}' in {path}; fix: add it"
    got = error.get("input")
    got_text = f" (got {got!r})" if not isinstance(got, dict | list) else ""
    return f"bad value for '{key}' in {path}: {error['msg']}{got_text}; fix: correct that value"


def read_yaml_mapping(
    path: Path, error: type[Exception], what: str, example: str
) -> dict[str, Any]:
    """A YAML file's top-level mapping with `${ENV:default}` interpolated; `error` names what
    is wrong (missing file, bad YAML, not a mapping)."""
    if not path.is_file():
        raise error(f"{what} not found: {path}; fix: pass {example}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise error(f"{path} must hold a mapping of keys at the top level")
    return interpolate_env(raw, where=str(path))


def load_config(
    path: str | os.PathLike[str], overrides: dict[str, Any] | None = None
) -> ExperimentConfig:
    """Load an experiment YAML. Raises `ConfigError` naming the key, the file and the fix."""
    path = Path(path)
    raw = read_yaml_mapping(
        path, ConfigError, "config file", "an existing YAML, e.g. configs/testbed.yaml"
    )
    if overrides:
        raw = merge_dicts(raw, overrides)
    return parse_config(raw, source=str(path))


def parse_config(raw: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e, source) for e in exc.errors()]
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None


def merge_dicts(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged
