"""`steproute testbed train` with a tiny budget: the command the model card's numbers come from."""

from __future__ import annotations

import hashlib
import json

from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.testbed.train import PRESETS


def test_testbed_train_writes_a_loadable_model_with_its_record(tmp_path) -> None:
    result = CliRunner().invoke(
        app,
        ["testbed", "train", "--model", "small", "--iterations", "3", "--output", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    folder = tmp_path / "small"
    record = json.loads((folder / "training.json").read_text())
    assert record["spec"]["iterations"] == 3
    assert record["spec"]["misconceptions"] == list(PRESETS["small"].misconceptions)
    assert record["parameters"] > 0 and (folder / "model.safetensors").stat().st_size > 0
    assert (folder / "tokenizer.json").exists()


def test_unknown_preset_is_an_error_listing_the_known_ones(tmp_path) -> None:
    result = CliRunner().invoke(
        app, ["testbed", "train", "--model", "huge", "--output", str(tmp_path)]
    )
    assert result.exit_code != 0
    assert "unknown preset" in result.output and "small" in result.output


def test_retraining_with_the_same_seed_reproduces_the_weights_bit_for_bit(tmp_path) -> None:
    def train(run: str, seed: int) -> str:
        result = CliRunner().invoke(
            app,
            [
                "testbed",
                "train",
                "--model",
                "small",
                "--iterations",
                "5",
                "--seed",
                str(seed),
                "--output",
                str(tmp_path / run),
            ],
        )
        assert result.exit_code == 0, result.output
        weights = (tmp_path / run / "small" / "model.safetensors").read_bytes()
        return hashlib.sha256(weights).hexdigest()

    first = train("first", seed=0)
    assert train("second", seed=0) == first
    assert train("other-seed", seed=1) != first  # the seed reaches the weights
