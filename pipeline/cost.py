"""Cost models: what one generated step costs on one model.

- `flops`: 2 × parameters × tokens processed, counting only prompt tokens that were not
  already in that engine's prefix cache (vLLM reports them as `cached_prompt_tokens`);
- `price`: per-token input and output prices (API models), prompt tokens all billed;
- `tokens`: uncached prompt tokens plus generated tokens.

Costs are absolute; `normalized` divides by the large-only cost of the same problems, which is
how budgets are stated (a budget of 0.3 = 30 % of what the large model alone would spend).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pipeline.config import ModelConfig
from pipeline.engines.types import StepResult

__all__ = ["COST_MODELS", "step_cost", "normalized"]

CostModelName = Literal["flops", "price", "tokens"]


def _flops(model: ModelConfig, result: StepResult) -> float:
    if model.cost.parameters is None:
        raise ValueError(
            f"model '{model.name}' has no cost.parameters (needed by the flops cost model)"
        )
    processed = result.prompt_tokens - result.cached_prompt_tokens + len(result.token_ids)
    return 2.0 * model.cost.parameters * processed


def _price(model: ModelConfig, result: StepResult) -> float:
    prices = model.cost
    if prices.input_price_per_token is None or prices.output_price_per_token is None:
        raise ValueError(f"model '{model.name}' needs per-token prices for the price cost model")
    return (
        prices.input_price_per_token * result.prompt_tokens
        + prices.output_price_per_token * len(result.token_ids)
    )


def _tokens(model: ModelConfig, result: StepResult) -> float:
    return float(result.prompt_tokens - result.cached_prompt_tokens + len(result.token_ids))


COST_MODELS: dict[str, Callable[[ModelConfig, StepResult], float]] = {
    "flops": _flops,
    "price": _price,
    "tokens": _tokens,
}


def step_cost(cost_model: CostModelName, model: ModelConfig, result: StepResult) -> float:
    try:
        fn = COST_MODELS[cost_model]
    except KeyError:
        raise ValueError(
            f"unknown cost model '{cost_model}'; known: {sorted(COST_MODELS)}"
        ) from None
    return fn(model, result)


def normalized(cost: float, large_only_cost: float) -> float:
    """`cost` as a fraction of the large-only cost of the same problems."""
    if large_only_cost <= 0:
        raise ValueError("large-only cost must be positive to normalize against it")
    return cost / large_only_cost
