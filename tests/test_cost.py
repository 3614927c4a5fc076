from __future__ import annotations

import pytest

from pipeline.config import CostConfig, ModelConfig
from pipeline.cost import normalized, step_cost
from pipeline.engines.types import StepResult

SMALL = ModelConfig(
    name="s",
    path="s",
    cost=CostConfig(parameters=1e6, input_price_per_token=1e-8, output_price_per_token=4e-8),
)
STEP = StepResult(
    token_ids=(1, 2, 3, 4),
    text="abcd",
    token_logprobs=(0.0,) * 4,
    prompt_tokens=100,
    cached_prompt_tokens=96,
)


def test_flops_counts_only_uncached_prompt_tokens_and_outputs() -> None:
    assert step_cost("flops", SMALL, STEP) == 2 * 1e6 * (4 + 4)


def test_price_bills_every_prompt_token() -> None:
    assert step_cost("price", SMALL, STEP) == pytest.approx(100 * 1e-8 + 4 * 4e-8)


def test_tokens_cost_model() -> None:
    assert step_cost("tokens", SMALL, STEP) == 8


def test_missing_inputs_and_unknown_model_are_errors() -> None:
    bare = ModelConfig(name="b", path="b")
    with pytest.raises(ValueError, match="cost.parameters"):
        step_cost("flops", bare, STEP)
    with pytest.raises(ValueError, match="per-token prices"):
        step_cost("price", bare, STEP)
    with pytest.raises(ValueError, match="unknown cost model 'watts'"):
        step_cost("watts", SMALL, STEP)  # type: ignore[arg-type]


def test_normalized_to_large_only() -> None:
    assert normalized(30.0, 100.0) == 0.3
    with pytest.raises(ValueError):
        normalized(1.0, 0.0)
