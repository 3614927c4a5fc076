"""Stage bookkeeping of `steproute pipeline`: what a config change makes stale."""

from __future__ import annotations

from pipeline.config import load_config
from pipeline.jobs import STAGES, _done, _mark, _outputs, stage_hash


def _cfg(tmp_path, **overrides):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "testbed.yaml"
    return load_config(path, {"output_dir": str(tmp_path), **overrides})


def test_a_training_change_makes_training_and_later_stages_stale(tmp_path) -> None:
    base = _cfg(tmp_path)
    changed = _cfg(tmp_path, training={"cost_weight": 0.123})
    same = {s for s in STAGES if stage_hash(base, s) == stage_hash(changed, s)}
    assert same == {"baselines"}
    calib = _cfg(tmp_path, calibration={"delta": 0.05})
    assert {s for s in STAGES if stage_hash(base, s) != stage_hash(calib, s)} == {
        "calibrate",
        "evaluate",
    }
    assert all(stage_hash(base, s) == stage_hash(_cfg(tmp_path), s) for s in STAGES)


def test_a_stage_is_done_only_with_its_outputs_and_the_same_hash(tmp_path) -> None:
    cfg = _cfg(tmp_path)
    assert not _done(cfg, "train")
    _mark(cfg, "train", 1.0)
    assert not _done(cfg, "train")  # marker without outputs
    for path in _outputs(cfg, "train"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert _done(cfg, "train")
    assert not _done(_cfg(tmp_path, training={"lr": 0.5}), "train")
