"""The testbed process reward model: the committed folder is what vLLM's
`Qwen2ForProcessRewardModel` loads, it ranks held-out right steps above wrong ones through real
vLLM, and `steproute testbed train-prm` makes a folder vLLM loads."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.controller import Controller
from pipeline.data import load_split
from pipeline.metrics import auroc
from pipeline.rules import make_rule
from pipeline.testbed.prm import LabelledSequence, tagged_step
from pipeline.testbed.tasks import grade_step
from pipeline.testbed_card import sha256_of
from pipeline.testbed_prm import vllm_step_probabilities

REPO = Path(__file__).resolve().parents[2]
PRM = REPO / "pipeline" / "testbed" / "models" / "prm"
MAX_BYTES = 8 * 2**20
# Measured 0.978 on these steps (1,318 steps, 152 wrong; MODEL_CARD.md: 0.968 on the whole
# test split); the small model's own confidence (−mean logprob) scores 0.782 on the same steps.
AUROC_FLOOR = 0.90


def test_committed_prm_has_the_names_vllms_process_reward_model_loads() -> None:
    config = json.loads((PRM / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForProcessRewardModel"]
    assert config["num_labels"] == 2 and config["model_type"] == "qwen2"
    with safe_open(PRM / "model.safetensors", framework="pt") as weights:
        names = set(weights.keys())
        head = weights.get_tensor("score.2.weight")
    assert {"score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"} <= names
    assert "model.embed_tokens.weight" in names and "model.norm.weight" in names
    assert all(name.startswith(("model.", "score.")) for name in names), names
    assert tuple(head.shape) == (2, config["hidden_size"])  # (wrong, right)
    assert sum(f.stat().st_size for f in PRM.iterdir()) <= MAX_BYTES
    card = (PRM.parent / "MODEL_CARD.md").read_text()
    assert sha256_of(PRM / "model.safetensors") in card, "the PRM differs from MODEL_CARD.md"


@pytest.fixture(scope="module")
def held_out_steps(testbed_cfg, testbed_engines) -> list[LabelledSequence]:
    """Each step of the small model's greedy drafts of test-split problems, as a caller asks the
    PRM about it: the small model's context before it plus the step, ending in the step tag."""
    problems = load_split(testbed_cfg.dataset, "test")[:240]
    controller = Controller(testbed_cfg, testbed_engines)
    states = asyncio.run(controller.run(problems, make_rule("small_only"), concurrency=256))
    steps = []
    for state in states:
        context = list(state.contexts["small"][: state.prompt_lengths["small"]])
        texts = [step.text for step in state.steps]
        for index, step in enumerate(state.steps):
            ids = context + tagged_step(step.token_ids)
            right = grade_step(state.problem.question, texts[:index], step.text)
            steps.append(LabelledSequence(tuple(ids), (len(ids) - 1,), (right,)))
            context += step.token_ids
    return steps


def test_committed_prm_scores_held_out_right_steps_above_wrong_ones_in_vllm(
    held_out_steps,
) -> None:
    wrong = [not s.right[0] for s in held_out_steps]
    assert sum(wrong) >= 100 and len(wrong) - sum(wrong) >= 100  # >= 100 x 100 pairs
    p_right = [row[0] for row in vllm_step_probabilities(PRM, held_out_steps)]
    # AUROC = the share of (right, wrong) pairs in which the right step scores higher.
    assert auroc([1 - p for p in p_right], wrong) >= AUROC_FLOOR


@pytest.mark.parametrize("labels", ["step_grader", "monte_carlo"])
def test_train_prm_with_a_tiny_budget_writes_a_folder_vllm_loads(
    tmp_path, monkeypatch, labels
) -> None:
    """From the small model's body (`--init-from`): a PRM priced like the small model, trained
    on either kind of label (`--labels`) and measured on graded test drafts."""
    monkeypatch.setenv("STEPROUTE_OUTPUT", str(tmp_path / "runs"))  # its step cache goes here
    out = tmp_path / "prm"
    small = REPO / "pipeline" / "testbed" / "models" / "small"
    result = CliRunner().invoke(
        app,
        ["testbed", "train-prm", "--problems", "12", "--test-problems", "12", "--epochs", "1"]
        + ["--out", str(out), "--init-from", str(small), "--labels", labels],
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "training.json").read_text())
    measured = record["measured"]
    assert record["spec"]["epochs"] == 1 and measured["test_steps"] > 0
    assert record["spec"]["init_from"] == str(small)
    assert record["spec"]["labels"] == labels and measured["train_steps"] > 0
    body, prm = (json.loads((folder / "config.json").read_text()) for folder in (small, out))
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size"):
        assert prm[key] == body[key], key  # the small model's body, not the large one's
    # vLLM loaded the folder and answered at every test step as the torch model does.
    assert measured["vllm_max_difference"] < 1e-3, measured
    assert "AUROC" in result.output


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--init-from", "."], "no config.json"),
        (["--labels", "monte_carlo", "--large-drafts"], "large_drafts"),
        (["--labels", "oracle"], "step_grader"),
    ],
)
def test_train_prm_refuses_bad_options_before_it_starts(options, message) -> None:
    result = CliRunner().invoke(app, ["testbed", "train-prm", *options])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and message in result.output
    assert "Traceback" not in result.output
