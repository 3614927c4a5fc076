"""Per-trajectory cost accounting: hand-computed charges under each cost model."""

from __future__ import annotations

import pytest

from pipeline.config import CostConfig, ModelConfig
from pipeline.cost import Charge, ProcessedTokens, available_cost_models, call_cost, normalized

SMALL = ModelConfig(
    name="s",
    path="s",
    cost=CostConfig(
        parameters=1e6,
        input_price_per_token=1e-8,
        cached_input_price_per_token=0.25e-8,
        output_price_per_token=4e-8,
    ),
)


def test_a_model_pays_prefill_only_for_context_it_has_not_processed() -> None:
    seen = ProcessedTokens()
    question = [1, 2, 3, 4, 5, 6]
    first = seen.charge(question, [7, 8])  # cold: the whole question is prefilled
    assert first == Charge(prefill_tokens=6, cached_tokens=0, generated_tokens=2)
    # Its own step was kept: the next call reads all 8 tokens from its cache.
    second = seen.charge([*question, 7, 8], [9])
    assert second == Charge(0, 8, 1)
    # Its draft [10, 11] was replaced by another model's step [10, 12]: the shared token is
    # cached, the rest is prefilled.
    seen.charge([*question, 7, 8, 9], [10, 11])
    third = seen.charge([*question, 7, 8, 9, 10, 12], [13])
    assert third == Charge(prefill_tokens=1, cached_tokens=10, generated_tokens=1)


def test_flops_counts_prefilled_and_generated_tokens() -> None:
    assert call_cost("flops", SMALL, Charge(5, 95, 4)) == 2 * 1e6 * (5 + 4)


def test_price_bills_input_cached_input_and_output_separately() -> None:
    cost = call_cost("price", SMALL, Charge(5, 95, 4))
    assert cost == pytest.approx(5 * 1e-8 + 95 * 0.25e-8 + 4 * 4e-8)
    # Without a cached price, cached tokens are billed as input (a provider with no discount).
    plain = SMALL.model_copy(
        update={"cost": SMALL.cost.model_copy(update={"cached_input_price_per_token": None})}
    )
    assert call_cost("price", plain, Charge(5, 95, 4)) == pytest.approx(100 * 1e-8 + 4 * 4e-8)


def test_tokens_counts_only_what_models_above_the_drafter_generate() -> None:
    assert call_cost("tokens", SMALL, Charge(5, 95, 4)) == 4
    assert call_cost("tokens", SMALL, Charge(5, 95, 4, drafting=True)) == 0


def test_missing_inputs_and_unknown_model_are_errors() -> None:
    bare = ModelConfig(name="b", path="b")
    with pytest.raises(ValueError, match="cost.parameters"):
        call_cost("flops", bare, Charge(1, 0, 1))
    with pytest.raises(ValueError, match="per-token prices"):
        call_cost("price", bare, Charge(1, 0, 1))
    with pytest.raises(ValueError, match="unknown cost model 'watts'"):
        call_cost("watts", SMALL, Charge(1, 0, 1))  # type: ignore[arg-type]
    assert available_cost_models([SMALL, bare]) == ("tokens",)
    assert available_cost_models([SMALL]) == ("flops", "price", "tokens")


def test_normalized_to_large_only() -> None:
    assert normalized(30.0, 100.0) == 0.3
    with pytest.raises(ValueError):
        normalized(1.0, 0.0)
