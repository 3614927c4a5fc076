"""The evaluation harness end to end on the testbed (real engines, real MLflow on SQLite)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from pipeline import metrics
from pipeline.calibration import OperatingPoint, save_operating_points
from pipeline.calibration_run import save_calibration_rows
from pipeline.cli import app
from pipeline.config import parse_config
from pipeline.evaluation import evaluate, seed_spread
from pipeline.policy import RouterPolicy

RULES = [
    "small_only",
    "large_only",
    "confidence_threshold",
    "large_likelihood",
    "random",
    "policy",
    "prm_threshold",
    "oracle",
]


@pytest.fixture(scope="module")
def small_eval_cfg(testbed_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    raw = testbed_cfg.model_dump(mode="json")
    raw["output_dir"] = str(out)
    raw["evaluation"] |= {"limit": 12, "escalation_targets": [0.3], "rules": RULES}
    # A "trained" policy in the output folder, with one calibrated operating point.
    policy_dir = RouterPolicy.hand_set().save(out / "policy")
    # Its budget was tested on 100 problems, 60 of them a budget pool's.
    point = OperatingPoint(
        "budget-0.5", 0.05, "ltt", 0.4, (0.3, 0.5), 0.7, (0.6, 0.8), 100, labelled=40
    )
    save_operating_points([point], policy_dir)
    # The grid's rows beside it, as `steproute calibrate` saves them: here only the two
    # baselines, on four calibration problems (small-only right on 1, large-only on 3) and two
    # of the budget pool (right throughout, but their answers are not read).
    baselines = pd.DataFrame(
        {
            "rule": ["small_only"] * 6 + ["large_only"] * 6,
            "threshold": math.nan,
            "problem_id": [f"c{i}" for i in range(6)] * 2,
            "labelled": [True] * 4 + [False] * 2 + [True] * 4 + [False] * 2,
            "correct": [True, False, False, False, True, True, True, True, True, False, True, True],
            "cost": 1.0,
        }
    )
    save_calibration_rows(baselines, policy_dir)
    return parse_config(raw)


@pytest.fixture(scope="module")
def two_runs(small_eval_cfg, testbed_engines):
    """The same evaluation twice: every operating point of a rule in one pass (shared
    trajectories), then a run per point, four side by side."""
    first = evaluate(small_eval_cfg, engines=testbed_engines)
    per_point = small_eval_cfg.evaluation.model_copy(
        update={"shared_trajectories": False, "points_in_flight": 4}
    )
    second = evaluate(
        small_eval_cfg.model_copy(update={"evaluation": per_point}), engines=testbed_engines
    )
    return first, second


def test_rerun_hits_the_step_cache_and_reproduces_every_result(two_runs) -> None:
    """A run per operating point gives the rows of the shared pass, in the same order, traces
    and all: each point's trajectories are its own run's."""
    first, second = two_runs
    assert second.cache_stats["cache/hit_rate"] >= 0.95
    columns = ["rule", "threshold", "problem_id", "correct", "cost", "escalated_steps"]
    pd.testing.assert_frame_equal(first.results[columns], second.results[columns])
    # Step by step: the same writers, texts, costs and drafts; the scores too, but the policy
    # network's float32 scores move in the 7th digit with the batch a draft is scored in.
    for shared, own in zip(first.results.trace, second.results.trace, strict=True):
        shared, own = json.loads(shared), json.loads(own)
        assert [{**s, "score": None} for s in shared] == [{**s, "score": None} for s in own]
        scores = [math.nan if s["score"] is None else s["score"] for s in own]
        assert [math.nan if s["score"] is None else s["score"] for s in shared] == pytest.approx(
            scores, rel=1e-5, nan_ok=True
        )
    report = (second.output_dir / "report.md").read_text()
    assert "TESTBED" in report and "| yes |" in report  # both runs listed, results identical


def test_thresholded_curves_run_from_small_only_to_the_large_models_trajectory(two_runs) -> None:
    points = two_runs[0].points
    small = points[points.rule == "small_only"].iloc[0]
    large = points[points.rule == "large_only"].iloc[0]
    for rule in ("confidence_threshold", "random", "policy"):
        curve = points[points.rule == rule]
        never, always = (
            curve[curve.threshold == math.inf].iloc[0],
            curve[curve.threshold == 0].iloc[0],
        )
        assert never.accuracy == small.accuracy and never.cost == pytest.approx(small.cost)
        assert always.accuracy == large.accuracy and always.escalation_rate == 1.0
        assert always.cost > large.cost  # the drafts were paid for too


def test_outputs_are_written_and_prm_is_reported_as_not_run(two_runs) -> None:
    result = two_runs[0]
    folder = result.output_dir
    for name in (
        "report.md",
        "results.parquet",
        "points.csv",
        "accuracy_cost.png",
        "escalation_by_step.png",
    ):
        assert (folder / name).stat().st_size > 0, name
    assert "prm_threshold" in result.skipped
    assert "prm_threshold" in (folder / "report.md").read_text()
    table = pd.read_parquet(folder / "results.parquet")
    assert (
        set(table.problem_id) == set(result.results.problem_id) and len(set(table.problem_id)) == 12
    )


def test_metrics_reach_mlflow(two_runs, small_eval_cfg) -> None:
    import mlflow

    mlflow.set_tracking_uri(small_eval_cfg.mlflow_uri)
    runs = mlflow.search_runs(experiment_names=[small_eval_cfg.tracking.experiment])
    assert len(runs) == 2
    assert runs["metrics.eval/confidence_threshold/auc"].notna().all()


def test_cli_evaluate_smoke(small_eval_cfg, testbed_engines, tmp_path) -> None:
    config = tmp_path / "cfg.yaml"
    import yaml

    raw = small_eval_cfg.model_dump(mode="json")
    raw["evaluation"]["limit"] = 4
    config.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "-c",
            str(config),
            "-r",
            "small_only",
            "-r",
            "large_only",
            "-r",
            "confidence_threshold",
            "--output",
            str(tmp_path / "out"),
            "--no-mlflow",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "TESTBED" in result.output and (tmp_path / "out" / "report.md").exists()
    assert "RouterPolicy" not in (tmp_path / "out" / "report.md").read_text()  # policy not run


def test_cli_evaluate_rejects_an_unknown_rule(tmp_path) -> None:
    result = CliRunner().invoke(app, ["evaluate", "-r", "bogus"])
    assert result.exit_code == 2
    assert "unknown rule" in result.output and "confidence_threshold" in result.output


def test_policy_curve_includes_the_calibrated_points_checked_on_this_split(two_runs) -> None:
    result = two_runs[0]
    assert (result.points[result.points.rule == "policy"].threshold == 0.05).any()
    report = (result.output_dir / "report.md").read_text()
    assert "Calibrated operating points on this split" in report
    assert "| budget-0.5 | ltt | 0.05 |" in report
    assert "the trained RouterPolicy" in report
    points = result.points
    here = points[(points.rule == "policy") & (points.threshold == 0.05)].cost_normalized.iloc[0]
    row = next(line for line in report.splitlines() if line.startswith("| budget-0.5 | ltt"))
    assert row.endswith(f"| {0.5 - here:.3f} |")  # what the point left of its budget here
    assert "the budgets were tested on 100, with 60 from the budget pool" in report
    # The cost column says it averages the split and the pool; accuracy is the split's alone.
    assert "| calibration cost (split + pool) | calibration accuracy |" in report
    # The splits compared, from the calibration rows beside the points and this run's baselines.
    accuracy = points.drop_duplicates("rule").set_index("rule").accuracy
    assert (
        f"small_only 0.250 on the 4 calibration problems and {accuracy['small_only']:.3f} here; "
        f"large_only 0.750 on the 4 calibration problems and {accuracy['large_only']:.3f} here"
    ) in report


def test_every_rule_gets_its_shortfall_against_the_confidence_rule(two_runs) -> None:
    summary = two_runs[0].summary.set_index("rule")
    column = summary["shortfall/confidence_threshold"]
    assert np.isnan(column["confidence_threshold"])  # not measured against itself
    assert (column.drop(["confidence_threshold", "small_only", "large_only"]) >= 0).all()
    # Small-only never rises above small accuracy: it falls short wherever confidence gains.
    assert column["small_only"] > 0
    # Measured on the configured cost model's curves (not another cost model's).
    points = two_runs[0].points
    curve = {
        r: list(zip(g.cost_normalized, g.accuracy, strict=True)) for r, g in points.groupby("rule")
    }
    small = points[points.rule == "small_only"].iloc[0]
    for rule in ("random", "policy", "oracle"):
        expected = metrics.shortfall(
            curve[rule], curve["confidence_threshold"], small.accuracy, small.cost_normalized
        )
        assert column[rule] == pytest.approx(expected)


def test_report_shows_the_oracle_and_cost_at_large_under_every_cost_model(two_runs) -> None:
    result = two_runs[0]
    summary = result.summary.set_index("rule")
    assert "oracle" in summary.index
    for name in ("flops", "price", "tokens"):
        assert f"cost_at_large_accuracy/{name}" in summary.columns
        assert f"cost_{name}" in result.results.columns
    # The configured cost model's column is the `cost` column.
    pd.testing.assert_series_equal(
        result.results["cost"], result.results["cost_price"], check_names=False
    )
    assert math.isnan(summary.loc["large_only", "apgr"])  # one point: no curve
    report = (result.output_dir / "report.md").read_text()
    assert "cost@large under every cost model" in report
    assert "| large_only | — | — |" in report


def test_seeds_each_get_their_curve_and_the_report_gives_the_spread(
    small_eval_cfg, testbed_engines, tmp_path
) -> None:
    # Two "seeds": the hand-set policy and one that escalates more (a higher bias), each with a
    # calibrated point, where `steproute train --seeds 0,1` would have exported them.
    raw = small_eval_cfg.model_dump(mode="json")
    raw["output_dir"] = str(tmp_path)
    raw["evaluation"] |= {
        "limit": 6,
        "rules": ["small_only", "large_only", "policy"],
        "escalation_targets": [0.3, 0.7],  # six problems do not need the testbed's 19 points
    }
    cfg = parse_config(raw)
    for seed, bias, kappa in ((0, 12.0, 0.05), (1, 16.0, 0.15)):
        policy = RouterPolicy.hand_set()
        with torch.no_grad():
            policy.head.bias[1] = bias
        folder = policy.save(cfg.seed_dir(seed) / "policy")
        point = OperatingPoint(
            f"budget-0.{5 + seed}", kappa, "ltt", 0.4, (0.3, 0.5), 0.7, (0.6, 0.8), 50
        )
        save_operating_points([point], folder)

    result = evaluate(cfg, engines=testbed_engines, seeds=[0, 1], track=False)
    rules = set(result.summary.rule)
    assert {"policy/seed-0", "policy/seed-1"} <= rules and "policy" not in rules
    seed1 = result.points[result.points.rule == "policy/seed-1"]
    assert (seed1.threshold == 0.15).any() and not (seed1.threshold == 0.05).any()
    spread = seed_spread(result.summary)
    apgr = result.summary.set_index("rule").apgr
    assert spread["seeds"] == 2
    assert spread["apgr_mean"] == pytest.approx((apgr["policy/seed-0"] + apgr["policy/seed-1"]) / 2)
    report = (result.output_dir / "report.md").read_text()
    assert "## Seeds" in report and f"mean APGR {spread['apgr_mean']:.3f}" in report
    assert "Calibrated operating points on this split: `policy/seed-1`" in report


def test_seeds_without_trained_policies_are_a_clear_error(small_eval_cfg, tmp_path) -> None:
    raw = small_eval_cfg.model_dump(mode="json")
    raw["output_dir"] = str(tmp_path)
    with pytest.raises(ValueError, match="steproute train --seeds 0,3"):
        evaluate(parse_config(raw), seeds=[0, 3], track=False)


def test_cli_rejects_malformed_seeds() -> None:
    for bad in ("a,b", "1,1"):
        result = CliRunner().invoke(app, ["evaluate", "--seeds", bad])
        assert result.exit_code != 0 and "--seeds" in result.output, result.output


def test_policy_vs_prm_takes_the_prm_scoring_cost_out_only_where_asked() -> None:
    from pipeline.evaluation.summary import policy_vs_prm, summarize

    rows = []

    def add(rule, threshold, correct, cost, prm_cost=0.0):
        for i, (c, x) in enumerate(zip(correct, cost, strict=True)):
            rows.append(
                {
                    "rule": rule,
                    "threshold": threshold,
                    "problem_id": str(i),
                    "correct": c,
                    "cost": x + prm_cost,
                    "prm_cost": prm_cost,
                    "steps": 4,
                    "escalations": 1,
                }
            )

    add("small_only", float("nan"), [1, 0, 0, 0], [1.0] * 4)
    add("large_only", float("nan"), [1, 1, 1, 1], [10.0] * 4)
    add("prm_threshold", 0.5, [1, 1, 1, 0], [3.0] * 4, prm_cost=4.0)
    add("prm_threshold", 0.0, [1, 1, 1, 1], [6.0] * 4, prm_cost=4.0)
    add("policy", 0.5, [1, 1, 1, 0], [3.0] * 4)
    add("policy", 0.0, [1, 1, 1, 1], [6.0] * 4)
    results = pd.DataFrame(rows)
    _, summary = summarize(results)
    versus = policy_vs_prm(results, summary)
    # without its scoring cost the PRM router's curve is the policy's, point for point
    assert versus.prm_cost_at_large_unscored == pytest.approx(versus.policy_cost_at_large)
    assert versus.prm_cost_at_large > versus.prm_cost_at_large_unscored + 0.3
    assert versus.prm_apgr_unscored == pytest.approx(versus.policy_apgr)
    assert versus.prm_apgr < versus.policy_apgr
    assert versus.verdict.startswith("the policy is better")
    assert (
        policy_vs_prm(
            results[results.rule != "prm_threshold"], summary[summary.rule != "prm_threshold"]
        )
        is None
    )
