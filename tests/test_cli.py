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


def _summary_rows(output: str) -> list[list[str]]:
    """(benchmark, split, problems, from) per table row; a `from` cell folded over several
    lines is joined without whitespace (a narrow terminal folds inside a path)."""
    rows: list[list[str]] = []
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) != 4:
            continue
        if cells[0]:
            rows.append(cells)
        elif rows:
            rows[-1][3] += cells[3]
    return [[*row[:3], "".join(row[3].split())] for row in rows]


def test_data_summary_counts_every_split() -> None:
    result = runner.invoke(
        app, ["data", "summary", "--config", str(REPO / "configs" / "math500_qwen25math.yaml")]
    )
    assert result.exit_code == 0, result.output
    rows = _summary_rows(result.output)
    assert [row[:2] for row in rows] == [["math500", s] for s in ("train", "calibration", "test")]
    assert sum(int(row[2].replace(",", "")) for row in rows) == 500  # one file, three ways
    assert all("math500/test.jsonl" in row[3] for row in rows)


def test_data_summary_shows_the_standard_gsm8k_protocol() -> None:
    """Train and calibration come from the 7,473 problems of train.jsonl, test is all 1,319 of
    test.jsonl; offline, from the local files."""
    config = REPO / "configs" / "gsm8k_qwen25math.yaml"
    result = runner.invoke(app, ["data", "summary", "--config", str(config)])
    assert result.exit_code == 0, result.output
    counts = {row[1]: int(row[2].replace(",", "")) for row in _summary_rows(result.output)}
    origins = {row[1]: row[3] for row in _summary_rows(result.output)}
    assert counts["train"] + counts["calibration"] == 7473
    assert 0.18 < counts["calibration"] / 7473 < 0.22  # calibration_fraction 0.2
    assert counts["test"] == 1319
    assert "gsm8k/train.jsonl" in origins["train"] and "gsm8k/train.jsonl" in origins["calibration"]
    assert "gsm8k/test.jsonl" in origins["test"]
    assert "0 training problem(s) dropped" in result.output


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


@pytest.mark.parametrize(
    ("command", "override", "field"),
    [
        (["train"], "training.cost_weight=-1", "cost_weight"),
        (["calibrate"], "calibration.budgets=[0.5, -0.2]", "every budget must be > 0"),
        (["calibrate", "--method", "ltt"], "calibration.method=bogus", "method"),
        (["pipeline"], "evaluation.limit=0", "limit"),
        (["evaluate", "--limit", "5"], "evaluation.limit=0", "limit"),
    ],
)
def test_set_reaches_the_config_a_command_loads(command, override, field) -> None:
    """`--set` is applied before anything starts: a value only the override makes invalid is
    refused in one error line (and it wins over the command's own option, `--method`)."""
    config = str(REPO / "configs" / "testbed.yaml")
    result = runner.invoke(app, [*command, "--config", config, "--set", override])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and field in result.output
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


def test_a_command_names_its_log_file_and_refuses_an_unknown_log_level(tmp_path) -> None:
    """A real process: it logs to a file under $STEPROUTE_LOG_DIR and prints its path; its
    warnings reach both the console and the file."""
    import os

    env = os.environ | {"STEPROUTE_LOG_DIR": str(tmp_path)}
    env.pop("STEPROUTE_LOG_LEVEL", None)
    command = [sys.executable, "-m", "pipeline.cli"]
    config = str(REPO / "configs" / "omnimath_qwen25math.yaml")  # logs skipped records at WARNING
    quiet = subprocess.run(
        [*command, "data", "summary", "--config", config], env=env, capture_output=True, text=True
    )
    assert quiet.returncode == 0, quiet.stderr
    (log_file,) = tmp_path.glob("steproute-data-*.log")
    assert f"log: {log_file}" in quiet.stderr
    assert "skipped" in quiet.stderr and "skipped" in log_file.read_text()
    bad = subprocess.run(
        [*command, "--log-level", "loud", "data", "summary"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--log-level 'loud'" in bad.stderr


def test_ray_and_rllib_warnings_go_to_the_log_file_when_the_console_is_quiet(tmp_path) -> None:
    """Ray and RLlib put console handlers of their own on their loggers: with the console at
    warning, a Ray command files their warnings and still shows their errors; at info, the
    console shows their warnings again."""
    import os

    env = os.environ | {"STEPROUTE_LOG_DIR": str(tmp_path)}
    script = (
        "import logging, sys\n"
        "from pipeline.cli.logs import configure_logging\n"
        "configure_logging(sys.argv[1], 'train')\n"
        "logging.getLogger('ray.rllib.algorithms.x').warning('rllib-note')\n"
        "logging.getLogger('ray.tune.x').warning('ray-note')\n"
        "logging.getLogger('ray.rllib.algorithms.x').error('rllib-error')\n"
    )
    quiet = subprocess.run(
        [sys.executable, "-c", script, "warning"], env=env, capture_output=True, text=True
    )
    assert quiet.returncode == 0, quiet.stderr
    (log_file,) = tmp_path.glob("steproute-train-*.log")
    filed = log_file.read_text()
    assert "rllib-note" not in quiet.stderr and "ray-note" not in quiet.stderr
    assert "rllib-error" in quiet.stderr
    assert all(line in filed for line in ("rllib-note", "ray-note", "rllib-error"))
    loud = subprocess.run(
        [sys.executable, "-c", script, "info"], env=env, capture_output=True, text=True
    )
    assert "rllib-note" in loud.stderr and "ray-note" in loud.stderr


def test_serve_with_direct_ingress_refuses_to_join_a_running_ray(monkeypatch) -> None:
    # Direct ingress is read by Serve's controller when Ray starts: a joined cluster keeps its own.
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    result = runner.invoke(app, ["serve", "--config", str(REPO / "configs" / "testbed.yaml")])
    assert result.exit_code == 2, result.output
    assert "serve.ingress: direct" in result.output and "ingress: proxy" in result.output


def test_serve_with_direct_ingress_names_a_port_in_use() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = str(REPO / "configs" / "testbed.yaml")
        result = runner.invoke(app, ["serve", "--config", config, "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert f"port {port} on 127.0.0.1 is in use" in result.output
