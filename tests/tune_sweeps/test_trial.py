"""One sweep trial's experiment config."""

from __future__ import annotations

from tune_sweeps.spec import parse_sweep
from tune_sweeps.trial import trial_config

SPEC = {
    "name": "t",
    "iterations": 4,
    "axes": {"cost_weight": {"loguniform": [0.1, 0.5]}},
    "search": {"algorithm": "random", "num_samples": 3},
}


def test_trial_config_sets_the_axes_and_shares_the_cache(testbed_cfg, tmp_path) -> None:
    spec = parse_sweep(SPEC | {"calibration_limit": 7})
    cfg = trial_config(
        testbed_cfg, {"cost_weight": 0.3, "budget": 0.4, "seed": 2.0}, spec, tmp_path
    )
    assert cfg.training.cost_weight == 0.3 and cfg.training.seed == 2
    assert cfg.routing.budget == 0.4 and cfg.training.dual_ascent  # a budget axis means dual ascent
    assert cfg.calibration.limit == 7
    assert cfg.output_dir == str(tmp_path)
    assert cfg.step_cache_dir == testbed_cfg.step_cache_dir.resolve()
