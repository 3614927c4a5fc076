"""Train the routing policy with RLlib PPO (new API stack) under a cost constraint.

One module ("router") is shared by every agent (problem). Per iteration: PPO samples env steps
from `StepRoutingEnv`, updates the module, and `LagrangianCallback` reads the finished problems'
accuracy, normalized cost and escalation rate from the envs; with `training.dual_ascent` it
moves λ toward the budget (λ ← max(0, λ + dual_lr · (cost − budget))) and hands it to every env.
Everything is logged to MLflow; checkpoints every `training.checkpoint_every` iterations
(`--resume` continues from the last one; a fresh start removes an earlier run's); the trained
`RouterPolicy` is exported to `<output_dir>/policy` and logged as an MLflow artifact.

Before the first iteration, with `training.warm_start_problems`, `warm_start` labels the drafts
of that many training problems by Monte-Carlo rollouts and fits the policy to them (its inputs
standardized on those drafts); PPO continues from that policy. Without it, `feature_statistics`
routes a sample of training problems at random (at the untrained policy's escalation rate) and
measures each feature's mean and spread; the module standardizes its inputs with them
(`training.standardize_features`) and PPO starts from p(escalate) = `initial_escalation`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.metrics import NUM_AGENT_STEPS_SAMPLED

from pipeline.config import ExperimentConfig
from rllib_env.env import StepRoutingEnv, env_config
from rllib_env.module import RouterRLModule

log = logging.getLogger(__name__)

__all__ = [
    "LagrangianCallback",
    "build_ppo_config",
    "dual_update",
    "feature_statistics",
    "router_module_spec",
    "train",
    "warm_start",
]

MODULE_ID = "router"
RLLIB_ENV_ID = "rllib-multi-agent-env-v0"  # the id RLlib's MultiAgentEnvRunner registers
STD_FLOOR = 0.05  # a feature (nearly) constant on the sample is centred, not blown up


def dual_update(cost_weight: float, measured_cost: float, budget: float, lr: float) -> float:
    """One dual-ascent step on λ: up when over budget, down (not below 0) when under."""
    return max(0.0, cost_weight + lr * (measured_cost - budget))


def _envs(runner):
    env = getattr(runner, "env", None)
    return [e.unwrapped for e in getattr(env, "envs", [])] if env is not None else []


class LagrangianCallback(RLlibCallback):
    """Collects per-problem stats from the envs after each iteration; updates λ if asked."""

    def on_sample_end(self, *, env_runner=None, metrics_logger=None, **kwargs) -> None:
        # RLlib 2.60 adds up a sample's per-agent step counts with int(); an agent that stepped in
        # an earlier sample but not in this one (its problem finished) has a NaN count, and the
        # sum raises "cannot convert float NaN to integer" (ray-project/ray#62635). A zero for
        # every agent id the env uses keeps each count a number without changing the sums.
        if env_runner is None or metrics_logger is None:
            return
        agent_ids = {str(aid) for env in _envs(env_runner) for aid in env.possible_agents}
        for agent_id in agent_ids:
            metrics_logger.log_value((NUM_AGENT_STEPS_SAMPLED, agent_id), 0, reduce="sum")

    def on_train_result(self, *, algorithm, metrics_logger=None, result, **kwargs) -> None:
        group = algorithm.env_runner_group
        per_runner = group.foreach_env_runner(
            lambda runner: [s for env in _envs(runner) for s in env.pop_stats()],
            local_env_runner=True,
        )
        stats = [s for runner_stats in per_runner for s in runner_stats]
        training = algorithm.config.env_config["training"]
        cost_weight = algorithm.config.env_config["cost_weight"]  # λ now (dual ascent moves it)
        summary = {"rollout/problems": float(len(stats)), "train/cost_weight": cost_weight}
        if stats:
            for key in ("correct", "cost_normalized", "escalation_rate", "steps"):
                summary[f"rollout/{key}"] = sum(s[key] for s in stats) / len(stats)
            summary["rollout/accuracy"] = summary.pop("rollout/correct")
            budget = training.get("budget")
            if training["dual_ascent"] and budget is not None:
                new = dual_update(
                    cost_weight, summary["rollout/cost_normalized"], budget, training["dual_lr"]
                )
                group.foreach_env_runner(
                    lambda runner: [env.set_cost_weight(new) for env in _envs(runner)],
                    local_env_runner=True,
                )
                algorithm.config.env_config["cost_weight"] = new
                summary["train/cost_weight_next"] = new
        result["steproute"] = summary


def _run_on_engines(cfg: ExperimentConfig, engines: dict | None, work):
    """`asyncio.run(work(controller))` on `engines`, or on the shared named engine actors behind
    the step cache, which is flushed afterwards so the next run (another seed) reads it."""
    import asyncio

    from pipeline.controller import Controller
    from pipeline.engines.cache import StepCache
    from pipeline.engines.launch import engine_pool

    async def main():
        cache = None if engines is not None else StepCache(cfg.step_cache_dir)
        async with engine_pool(cfg.models, cache=cache, engines=engines) as live:
            return await work(Controller(cfg, live))

    return asyncio.run(main())


def feature_statistics(
    cfg: ExperimentConfig, engines: dict | None = None, problems: int = 128
) -> tuple[list[float], list[float]]:
    """Mean and standard deviation (floored at `STD_FLOOR`) of every observation column, on
    `problems` training problems routed at random at `training.initial_escalation`, so the
    trajectory features vary as they will early in training. Engines: the shared named actors
    (with the step cache) unless given."""
    import numpy as np

    from pipeline.data import load_split
    from pipeline.rules import make_rule

    sample = load_split(cfg.dataset, "train")[:problems]
    rule = make_rule("random", p=cfg.training.initial_escalation, seed=cfg.training.seed)
    states = _run_on_engines(cfg, engines, lambda controller: controller.run(sample, rule))
    rows = np.asarray([step.features for state in states for step in state.steps])
    return rows.mean(0).tolist(), np.maximum(rows.std(0), STD_FLOOR).tolist()


def warm_start(
    cfg: ExperimentConfig, folder: Path, engines: dict | None = None
) -> tuple[Path, dict[str, float]]:
    """The supervised warm start: label the drafts of `training.warm_start_problems` training
    problems by Monte-Carlo rollouts (`pipeline.labels`), standardize the inputs on those
    drafts, fit a `RouterPolicy` and save it to `folder`. Returns the folder and its metrics."""
    import numpy as np
    import torch

    from pipeline.data import load_split
    from pipeline.labels import fit_policy, monte_carlo_labels
    from pipeline.policy import RouterPolicy

    t = cfg.training
    started = time.perf_counter()
    problems = load_split(cfg.dataset, "train")[: t.warm_start_problems]
    labels = _run_on_engines(
        cfg,
        engines,
        lambda controller: monte_carlo_labels(
            controller, problems, concurrency=cfg.evaluation.concurrency
        ),
    )
    labelled = time.perf_counter()
    with torch.random.fork_rng():  # the seed picks the initial weights, nothing else
        torch.manual_seed(t.seed)
        policy = RouterPolicy(t.hidden_sizes, len(cfg.models), labels.features.shape[1])
    if t.standardize_features:
        spread = np.maximum(labels.features.std(0), STD_FLOOR)
        policy.set_feature_statistics(labels.features.mean(0), spread)
    losses = fit_policy(
        policy,
        labels,
        epochs=t.warm_start_epochs,
        lr=t.warm_start_lr,
        weight_decay=t.warm_start_weight_decay,
        seed=t.seed,
    )
    policy.save(folder)
    metrics = {
        "warm/drafts": float(len(labels.keep_ok)),
        "warm/escalate_share": labels.escalate_share,
        "warm/rollouts": float(labels.rollouts),
        "warm/loss": losses[-1],
        "warm/label_seconds": labelled - started,
        "warm/fit_seconds": time.perf_counter() - labelled,
    }
    log.info("warm start: %s", {k: round(v, 4) for k, v in metrics.items()})
    return folder, metrics


def router_module_spec(
    cfg: ExperimentConfig,
    feature_stats: tuple[list[float], list[float]] | None = None,
    warm_start_dir: Path | None = None,
) -> MultiRLModuleSpec:
    """The one "router" module every agent shares, with the input statistics or the warm-started
    policy it starts from (see `RouterRLModule`)."""
    t = cfg.training
    model_config = {
        "hidden_sizes": list(t.hidden_sizes),
        "initial_escalation": t.initial_escalation,
    }
    if feature_stats is not None:
        model_config |= {"feature_mean": feature_stats[0], "feature_std": feature_stats[1]}
    if warm_start_dir is not None:
        model_config["warm_start"] = str(Path(warm_start_dir).resolve())
    return MultiRLModuleSpec(
        rl_module_specs={
            MODULE_ID: RLModuleSpec(module_class=RouterRLModule, model_config=model_config)
        }
    )


def build_ppo_config(
    cfg: ExperimentConfig,
    env_extra: dict | None = None,
    feature_stats: tuple[list[float], list[float]] | None = None,
    warm_start_dir: Path | None = None,
) -> PPOConfig:
    """PPO on `StepRoutingEnv`: the env runners, the shared router module and the learner's
    hyperparameters, all from `cfg.training`; `env_extra` goes into the env config."""
    t = cfg.training
    extra = {
        "cost_weight": t.cost_weight,
        "training": {
            "dual_ascent": t.dual_ascent,
            "dual_lr": t.dual_lr,
            "budget": cfg.routing.budget,
        },
        **(env_extra or {}),
    }
    return (
        PPOConfig()
        .environment(StepRoutingEnv, env_config=env_config(cfg, **extra))
        .multi_agent(
            policies={MODULE_ID},
            policy_mapping_fn=lambda agent_id, episode, **kwargs: MODULE_ID,
            # Batch sizes count routing decisions (agent steps), not env steps: one env step
            # carries up to `concurrency` decisions.
            count_steps_by="agent_steps",
        )
        .rl_module(rl_module_spec=router_module_spec(cfg, feature_stats, warm_start_dir))
        .env_runners(
            num_env_runners=t.num_env_runners,
            num_envs_per_env_runner=t.num_envs_per_env_runner,
            sample_timeout_s=t.sample_timeout_s,
            custom_resources_per_env_runner=dict(t.env_runner_resources),
        )
        .training(
            lr=t.lr,
            gamma=t.gamma,
            lambda_=t.gae_lambda,
            train_batch_size_per_learner=t.train_batch_size,
            minibatch_size=t.minibatch_size,
            num_epochs=t.num_epochs,
            entropy_coeff=t.entropy_coeff,
        )
        .callbacks(LagrangianCallback)
        # No Tune CPU/GPU monitor thread (it is not one of our metrics and warns without GPUtil).
        .debugging(seed=t.seed, log_sys_usage=False)
    )


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]


def _last_checkpoint(folder: Path) -> Path | None:
    """The last complete checkpoint: `steproute.json` is written after RLlib's state, so a run
    killed while saving leaves a folder without it, which is skipped."""
    checkpoints = sorted(c for c in folder.glob("iter_*") if (c / "steproute.json").exists())
    return checkpoints[-1] if checkpoints else None


def _clear_checkpoints(folder: Path) -> None:
    """A fresh start removes an earlier run's checkpoints: they are named by iteration, so a
    later `--resume` of this run would otherwise continue the earlier run's highest one."""
    stale = sorted(folder.glob("iter_*"))
    if stale:
        log.warning(
            "starting fresh: removing %d checkpoint(s) of an earlier run under %s "
            "(--resume continues a run instead)",
            len(stale),
            folder,
        )
    for path in stale:
        shutil.rmtree(path)


def _build_algorithm(
    cfg: ExperimentConfig, out: Path, last: Path | None, env_extra: dict | None
) -> tuple[Algorithm, int, dict[str, float]]:
    """The PPO algorithm, either resumed from checkpoint `last` (weights, statistics, λ and the
    iteration count) or fresh from the warm start / measured feature statistics. Returns it,
    the last finished iteration and the warm start's metrics (empty if none ran)."""
    stats, warm, warm_metrics = None, None, {}
    engines = (env_extra or {}).get("engines")
    # A resumed module restores its weights and statistics: a fresh start only measures them.
    if cfg.training.warm_start_problems and last is None:
        warm, warm_metrics = warm_start(cfg, out / "train" / "warm_start", engines)
    elif cfg.training.standardize_features and last is None:
        stats = feature_statistics(cfg, engines)
        log.info("feature means %s, spreads %s", _rounded(stats[0]), _rounded(stats[1]))
    config = build_ppo_config(cfg, env_extra, stats, warm)
    start_iteration = 0
    if last is not None:
        state = json.loads((last / "steproute.json").read_text())
        start_iteration = state["iteration"]
        config.env_config["cost_weight"] = state["cost_weight"]
    # RLlib registers its env runners' env with gymnasium under one fixed id on every build; a
    # second training in this process (`train --seeds 0,1,2`) would log "Overriding environment".
    gym.envs.registry.pop(RLLIB_ENV_ID, None)
    algo = config.build_algo()
    if last is not None:
        algo.restore_from_path(str(last.resolve()))
        log.info("resumed from %s (iteration %d)", last, start_iteration)
    return algo, start_iteration, warm_metrics


def _iteration_metrics(result: dict, seconds: float) -> dict[str, float]:
    """The `steproute` summary of one `algo.train()` result plus its speed and mean return,
    as floats without the NaNs (a metric RLlib did not report this iteration)."""
    metrics = dict(result.get("steproute", {}))
    runners = result.get("env_runners", {})
    env_steps = runners.get("num_env_steps_sampled", math.nan)
    metrics |= {
        "train/iteration_seconds": seconds,
        "rollout/env_steps_per_s": env_steps / seconds if seconds else math.nan,
        "rollout/episode_return_mean": runners.get("episode_return_mean", math.nan),
    }
    return {k: float(v) for k, v in metrics.items() if v is not None and not math.isnan(float(v))}


def _save_checkpoint(
    algo: Algorithm, checkpoints: Path, iteration: int, run_tag: str | None
) -> None:
    """RLlib's checkpoint plus `steproute.json` with the iteration and λ, which RLlib doesn't
    keep (λ lives in the env config) and `--resume` restores, and the run's tag."""
    path = (checkpoints / f"iter_{iteration:05d}").resolve()  # RLlib wants a URI
    algo.save_to_path(str(path))
    cost_weight = algo.config.env_config["cost_weight"]
    (path / "steproute.json").write_text(
        json.dumps({"iteration": iteration, "cost_weight": cost_weight, "tag": run_tag})
    )


def _checkpoint_tag(checkpoint: Path) -> str | None:
    """The tag of a complete checkpoint (`_last_checkpoint` returns no other)."""
    return json.loads((checkpoint / "steproute.json").read_text()).get("tag")


def train(
    cfg: ExperimentConfig,
    *,
    resume: bool = False,
    iterations: int | None = None,
    output_dir: Path | None = None,
    env_extra: dict | None = None,
    on_iteration: Callable[[int, dict], None] | None = None,
    track: bool = True,
    run_tag: str | None = None,
) -> Path:
    """Train, checkpoint, export; returns the exported policy folder. `run_tag` is kept with
    every checkpoint; with one, `resume` continues only checkpoints of the same tag and starts
    fresh otherwise (`steproute pipeline` tags its runs with the train stage's config hash, so
    a resubmitted job continues its interrupted training and a changed config starts over)."""
    import ray

    out = Path(output_dir or cfg.output_dir)
    checkpoints = out / "train" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        ray.init()
    last = _last_checkpoint(checkpoints) if resume else None
    if last is not None and run_tag is not None and _checkpoint_tag(last) != run_tag:
        log.info("the checkpoints under %s are another run's: starting fresh", checkpoints)
        last = None
    elif resume and last is None and run_tag is None:
        log.warning("--resume: no checkpoint under %s; starting fresh", checkpoints)
    if last is None:
        _clear_checkpoints(checkpoints)
    algo, start_iteration, warm_metrics = _build_algorithm(cfg, out, last, env_extra)
    total = cfg.training.iterations if iterations is None else iterations

    run_context = None
    if track:
        from pipeline.tracking import mlflow_run

        run_context = mlflow_run(cfg, f"train-{cfg.name}", tags={"kind": "training"})
        run_context.__enter__()
    try:
        import mlflow

        if track and warm_metrics:
            mlflow.log_metrics(warm_metrics, step=0)
        # ---- the PPO loop: sample + update (λ moves in `LagrangianCallback`), log, checkpoint
        for iteration in range(start_iteration + 1, total + 1):
            started = time.perf_counter()
            result = algo.train()
            metrics = _iteration_metrics(result, time.perf_counter() - started)
            log.info("iteration %d: %s", iteration, {k: round(v, 4) for k, v in metrics.items()})
            if track:
                mlflow.log_metrics(metrics, step=iteration)
            if on_iteration is not None:
                on_iteration(iteration, metrics)
            if iteration % cfg.training.checkpoint_every == 0 or iteration == total:
                _save_checkpoint(algo, checkpoints, iteration, run_tag)
        # ---- export: the module's policy, standalone (no RLlib needed to load it)
        policy_dir = algo.get_module(MODULE_ID).policy.save(out / "policy")
        if track:
            mlflow.log_artifacts(str(policy_dir), artifact_path="policy")
        return policy_dir
    finally:
        algo.stop()
        if run_context is not None:
            run_context.__exit__(None, None, None)
