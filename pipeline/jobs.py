"""The main job, `steproute pipeline`: every stage in order, each skipped when its outputs exist
and were made from the same config.

    baselines   evaluate the baseline rules (small_only, large_only, random, confidence, ...)
                → <output_dir>/baselines/; also warms the step cache for what follows
    train       RLlib PPO → <output_dir>/policy/
    calibrate   operating points → <output_dir>/policy/operating_points.json (and, when
                routing.rule is a baseline, <output_dir>/rules/<rule>/operating_points.json)
    evaluate    every configured rule, the calibrated policy included → <output_dir>/evaluation/
    serve       (optional) deploy the router on Ray Serve

A stage's marker (`<output_dir>/stages/<stage>.json`) records the hash of the config sections it
depends on, chained through the stages before it: change `training` and train, calibrate and
evaluate run again, while the baselines are kept. The same command runs locally (`ray.init()`)
or as a job on a cluster (`RAY_ADDRESS`, `ray job submit -- steproute pipeline …`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import ExperimentConfig

log = logging.getLogger(__name__)

__all__ = ["STAGES", "StageResult", "run_pipeline", "stage_hash"]

STAGES = ("baselines", "train", "calibrate", "evaluate")
# The rules the baselines stage runs (those the config lists): the handcrafted baselines and,
# on the testbed, the oracle, the upper reference.
BASELINE_RULES = (
    "small_only",
    "large_only",
    "random",
    "confidence_threshold",
    "calculator_confidence",
    "large_likelihood",
    "first_token_entropy",
    "prm_threshold",
    "oracle",
)

# The config sections each stage reads (besides what the stages before it produced).
_SECTIONS = {
    "baselines": ("models", "prm", "dataset", "routing", "evaluation"),
    "train": ("models", "dataset", "routing", "training"),
    "calibrate": ("models", "prm", "dataset", "routing", "calibration"),
    "evaluate": ("models", "prm", "dataset", "routing", "evaluation"),
}
_AFTER = {"baselines": None, "train": None, "calibrate": "train", "evaluate": "calibrate"}


@dataclass(frozen=True)
class StageResult:
    stage: str
    skipped: bool
    seconds: float
    outputs: tuple[str, ...]


def stage_hash(cfg: ExperimentConfig, stage: str) -> str:
    """Hash of what `stage` depends on: its config sections and the stage it builds on."""
    data = cfg.model_dump(mode="json")
    parts = {name: data[name] for name in _SECTIONS[stage]}
    before = _AFTER[stage]
    if before is not None:
        parts["_after"] = stage_hash(cfg, before)
    text = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _outputs(cfg: ExperimentConfig, stage: str) -> tuple[Path, ...]:
    out = Path(cfg.output_dir)
    served_baseline = cfg.routing.rule != "policy"  # Serve routes with a calibrated baseline
    return {
        "baselines": (out / "baselines" / "report.md", out / "baselines" / "summary.csv"),
        "train": (out / "policy" / "policy.json", out / "policy" / "policy.pt"),
        "calibrate": (out / "policy" / "operating_points.json",)
        + ((cfg.rule_dir(cfg.routing.rule) / "operating_points.json",) if served_baseline else ()),
        "evaluate": (out / "evaluation" / "report.md", out / "evaluation" / "summary.csv"),
    }[stage]


def _done(cfg: ExperimentConfig, stage: str) -> bool:
    marker = Path(cfg.output_dir) / "stages" / f"{stage}.json"
    if not marker.exists() or not all(p.exists() for p in _outputs(cfg, stage)):
        return False
    return json.loads(marker.read_text()).get("hash") == stage_hash(cfg, stage)


def _mark(cfg: ExperimentConfig, stage: str, seconds: float) -> None:
    folder = Path(cfg.output_dir) / "stages"
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "hash": stage_hash(cfg, stage),
        "seconds": round(seconds, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "outputs": [str(p) for p in _outputs(cfg, stage)],
    }
    (folder / f"{stage}.json").write_text(json.dumps(record, indent=2))


def _calibrate(cfg: ExperimentConfig) -> None:
    """The policy's operating points and, when `routing.rule` serves a baseline instead (e.g.
    prm_threshold), that rule's too."""
    from pipeline.calibration_run import calibrate_policy, calibrate_rule

    calibrate_policy(cfg, Path(cfg.output_dir) / "policy")
    if cfg.routing.rule != "policy":
        calibrate_rule(cfg, cfg.routing.rule)


def run_pipeline(
    cfg: ExperimentConfig,
    *,
    force: bool = False,
    say: Callable[[str], None] = print,
    progress: Callable[[str, int, int], None] | None = None,
    on_iteration: Callable[[int, dict], None] | None = None,
) -> list[StageResult]:
    """Run every stage not already done for this config; returns what ran and what was kept."""
    import ray

    from pipeline.engines.launch import start_engines
    from pipeline.evaluation import evaluate
    from rllib_env.train import train

    kept = {stage: not force and _done(cfg, stage) for stage in STAGES}
    if not all(kept.values()):  # engines only when a stage has work to do
        if not ray.is_initialized():
            ray.init()  # RAY_ADDRESS, when set (e.g. inside `ray job submit`), joins that cluster
        say("starting the engines (shared Ray actors)")
        start_engines(cfg.models, use_ray=True)

    out = Path(cfg.output_dir)
    baseline_rules = [r for r in cfg.evaluation.rules if r in BASELINE_RULES]
    actions: dict[str, Callable[[], None]] = {
        "baselines": lambda: evaluate(
            cfg, rules=baseline_rules, output_dir=out / "baselines", progress=progress
        ),
        # An interrupted training of this config (a resubmitted job) continues from its last
        # checkpoint; another config's checkpoints, or --force, start training over.
        "train": lambda: train(
            cfg, resume=not force, run_tag=stage_hash(cfg, "train"), on_iteration=on_iteration
        ),
        "calibrate": lambda: _calibrate(cfg),
        "evaluate": lambda: evaluate(cfg, progress=progress),
    }
    results = []
    for stage in STAGES:
        outputs = tuple(str(p) for p in _outputs(cfg, stage))
        if kept[stage]:
            say(f"stage {stage}: up to date (config hash {stage_hash(cfg, stage)}): kept")
            results.append(StageResult(stage, True, 0.0, outputs))
            continue
        say(f"stage {stage}: running")
        started = time.perf_counter()
        actions[stage]()
        seconds = time.perf_counter() - started
        _mark(cfg, stage, seconds)
        say(f"stage {stage}: done in {seconds / 60:.1f} min")
        results.append(StageResult(stage, False, seconds, outputs))
    return results
