from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_data_summary_counts_every_split() -> None:
    result = runner.invoke(
        app, ["data", "summary", "--config", str(REPO / "configs" / "math500_qwen25math.yaml")]
    )
    assert result.exit_code == 0, result.output
    assert "math500" in result.output
    assert "500" in result.output


def test_data_summary_bad_config_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodels: []\nwhatever: 1\n")
    result = runner.invoke(app, ["data", "summary", "--config", str(bad)])
    assert result.exit_code == 2
    assert "unknown key 'whatever'" in result.output


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate"],
        ["train"],
        ["calibrate"],
        ["serve"],
        ["pipeline"],
        ["testbed", "report"],
        ["testbed", "train-prm"],
    ],
)
def test_every_command_answers_a_bad_config_with_one_error_line(tmp_path: Path, command) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodels: []\nwhatever: 1\n")
    result = runner.invoke(app, [*command, "--config", str(bad)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "unknown key 'whatever'" in result.output
    assert "Traceback" not in result.output


def test_a_bad_sweep_spec_is_an_error_too(tmp_path: Path) -> None:
    spec = tmp_path / "sweep.yaml"
    spec.write_text("name: s\niterations: 1\nnot_a_field: 1\n")
    config = str(REPO / "configs" / "testbed.yaml")
    result = runner.invoke(app, ["sweep", "--config", config, "--sweep", str(spec)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output


def test_grade_file_reports_accuracy_and_writes_verdicts(tmp_path: Path) -> None:
    predictions = tmp_path / "preds.jsonl"
    rows = [
        {"id": "a", "prediction": "so \\boxed{\\frac{1}{2}}", "gold": "0.5"},
        {"id": "b", "prediction": "The answer is 7.", "gold": "8"},
        {"id": "c", "prediction": "no idea", "gold": "1"},
    ]
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "graded.jsonl"
    result = runner.invoke(app, ["grade", str(predictions), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "33.3%" in result.output
    graded = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["correct"] for g in graded] == [True, False, False]
    assert graded[2]["extracted"] is None


def test_grade_file_bad_row_names_the_line(tmp_path: Path) -> None:
    predictions = tmp_path / "preds.jsonl"
    predictions.write_text('{"prediction": "1", "gold": "1"}\n{"pred": "x"}\n')
    result = runner.invoke(app, ["grade", str(predictions)])
    assert result.exit_code == 2
    assert f"{predictions}:2" in result.output.replace("\n", "")


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "steproute"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0
    assert "data" in done.stdout and "grade" in done.stdout


def test_set_overrides_reach_the_loaded_config() -> None:
    import typer

    from pipeline.cli.options import parse_overrides
    from pipeline.config import load_config

    tree = parse_overrides(["evaluation.limit=400", "training.lr=0.002", "serve.auth.mode=on"])
    assert tree["evaluation"] == {"limit": 400}
    cfg = load_config(Path("configs/testbed.yaml"), tree)
    assert cfg.evaluation.limit == 400 and cfg.training.lr == 0.002
    assert cfg.serve.auth.mode == "on"  # YAML reads `on` as true: still the mode "on"
    with pytest.raises(typer.Exit):
        parse_overrides(["evaluation.limit"])
