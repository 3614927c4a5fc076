"""The stepwise controller: one state machine that solves many problems a step at a time.

Per problem a `ReasoningState` (pipeline.trajectory) holds each model's context as token ids,
the steps taken (and by which model), the cost paid so far and whether the problem is done. The
batched primitives are the whole vocabulary of routing:

    drafts = await controller.draft(states)            # small model, one step each (cost paid)
    obs = controller.observe(states, drafts)           # features, in FEATURE_NAMES order
    steps = await controller.escalate(states, "large") # a larger model writes the step instead
    controller.advance(state, step, model)             # append the kept step to every context

`run(problems, rule)` drives them for a routing rule, and `run_thresholds` for many thresholds
of one rule at once (their runs share each problem's trajectory until a score parts them); the
RLlib environment calls the same primitives with the policy's actions, and the Serve router calls
`solve` for one request. Nothing else implements the step loop.

A kept step is appended to every model's context as token ids. Models that share a vocabulary
(the testbed pair, Qwen2.5-Math 1.5B/7B) get the very ids generated; a model with another
vocabulary gets the step's text tokenized by its own tokenizer (not a re-tokenization of its own
output).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence

import numpy as np

from pipeline.config import ExperimentConfig, ModelConfig
from pipeline.cost import Charge, ProcessedTokens, available_cost_models, call_cost, cost_ceiling
from pipeline.data import Problem
from pipeline.engines.types import StepEngine, StepRequest, StepResult
from pipeline.features import (
    NUM_FEATURES,
    Observation,
    TrajectoryStats,
    draft_stats_batch,
    feature_vector,
    text_embeddings,
)
from pipeline.grading import extract_answer, grade
from pipeline.prompts import chat_context, load_tokenizers, prompt_token_ids, speaks_chat
from pipeline.rules import RoutingRule, ThresholdRule
from pipeline.trajectory import ReasoningState, StepRecord

log = logging.getLogger(__name__)

__all__ = ["Controller"]


class Controller:
    def __init__(
        self,
        cfg: ExperimentConfig,
        engines: Mapping[str, StepEngine],
        tokenizers: Mapping[str, object] | None = None,
    ) -> None:
        missing = [m.name for m in cfg.models if m.name not in engines]
        if missing:
            raise ValueError(f"no engine for model(s) {missing}; engines: {sorted(engines)}")
        self.cfg = cfg
        self.models: tuple[ModelConfig, ...] = cfg.models
        self.by_name = {m.name: m for m in cfg.engine_models}  # the ladder, and the PRM if any
        self.small = cfg.models[0].name
        self.large = cfg.models[-1].name
        self.engines = engines
        self.tokenizers = dict(tokenizers) if tokenizers else load_tokenizers(cfg.models)
        first = self.tokenizers[self.small].get_vocab()
        self._shared_vocab = all(t.get_vocab() == first for t in self.tokenizers.values())
        self.benchmark = cfg.dataset.name
        self.cost_models = available_cost_models(cfg.engine_models)
        # The scale of the cost feature: the budget per problem when one is set in absolute
        # terms is unknown here, so features use the large model's cost of max_steps steps.
        self.cost_ceiling = cost_ceiling(
            cfg.routing.cost_model, self.by_name[self.large], cfg.routing.max_steps
        )
        # Prompt token ids by question, per model (`prepare`); nothing else fills it, so a
        # long-lived controller (the Serve router's) does not grow with the questions it sees.
        self._prepared: dict[str, dict[str, tuple[int, ...]]] = {}

    # ------------------------------------------------------------------ states

    def prepare(self, problems: Iterable[Problem]) -> None:
        """Tokenize these problems' prompts now, for every later `start` of them. The RLlib env
        prepares its split when it is built, so admitting a problem mid-rollout costs it no
        tokenizer work (each model's chat template and encoding: on the testbed a quarter of
        the driver's work in an episode, benchmarks/RESULTS.md "Rollout, prompts tokenized
        once"); `evaluate_with` prepares its problems once for all its rules and points."""
        for problem in problems:
            if problem.question not in self._prepared:
                self._prepared[problem.question] = self._prompt_ids(problem)

    def _prompt_ids(self, problem: Problem) -> dict[str, tuple[int, ...]]:
        return {
            name: tuple(prompt_token_ids(tok, problem, self.benchmark))
            for name, tok in self.tokenizers.items()
        }

    def start(self, problem: Problem) -> ReasoningState:
        # A prompt is the question's (pipeline.prompts): prepared ones are looked up by it.
        prompts = self._prepared.get(problem.question) or self._prompt_ids(problem)
        contexts = {name: list(ids) for name, ids in prompts.items()}
        return ReasoningState(
            problem=problem,
            contexts=contexts,
            prompt_lengths={name: len(ids) for name, ids in contexts.items()},
        )

    def _request(self, state: ReasoningState, model: str, score_tokens: int = 0) -> StepRequest:
        sampling = self.by_name[model].sampling
        max_tokens = sampling.max_step_tokens
        if state.token_limit is not None:
            max_tokens = max(1, min(max_tokens, state.token_limit - self._generated(state)))
        return StepRequest(
            prompt_token_ids=tuple(state.contexts[model]),
            max_tokens=max_tokens,
            stop=(self.cfg.routing.step_separator,),
            n_logprobs=sampling.n_logprobs,
            temperature=sampling.temperature,
            seed=sampling.seed,
            score_tokens=score_tokens,
            chat=chat_context(state.problem, state.steps, self.benchmark)
            if speaks_chat(self.by_name[model])
            else None,
        )

    async def _generate(self, states: Sequence[ReasoningState], model: str) -> list[StepResult]:
        requests = [self._request(s, model) for s in states]
        results = await self.engines[model].generate_batch(requests)
        for state, request, result in zip(states, requests, results, strict=True):
            self._pay(state, model, request.prompt_token_ids, result)
        return results

    def _pay(
        self, state: ReasoningState, model: str, context: Sequence[int], result: StepResult
    ) -> None:
        """Charge `model`'s call on `context` to the trajectory (pipeline.cost): prefill for
        what this model has not processed in this trajectory, decode for what it generated."""
        processed = state.processed.setdefault(model, ProcessedTokens())
        charge = processed.charge(context, result.token_ids, drafting=model == self.small)
        if result.billed_tokens is not None:  # a remote server: what it billed, cache included
            charge = Charge.billed(*result.billed_tokens, drafting=charge.drafting)
        config = self.by_name[model]
        costs = {name: call_cost(name, config, charge) for name in self.cost_models}
        for name, value in costs.items():
            state.costs[name] = state.costs.get(name, 0.0) + value
        cost = costs[self.cfg.routing.cost_model]  # the config validator ensured its inputs
        state.cost += cost
        state.cost_by_model[model] = state.cost_by_model.get(model, 0.0) + cost
        state.tokens_by_model[model] = state.tokens_by_model.get(model, 0) + len(result.token_ids)

    # ------------------------------------------------------------------ primitives

    async def draft(self, states: Sequence[ReasoningState]) -> list[StepResult]:
        """The small model proposes the next step of each state; the draft's cost is paid."""
        for state in states:
            state._step_start_cost = state.cost
        return await self._generate(states, self.small)

    async def escalate(self, states: Sequence[ReasoningState], model: str) -> list[StepResult]:
        """`model` writes the next step of each state instead of the draft."""
        return await self._generate(states, model)

    async def write_escalated(
        self, states: Sequence[ReasoningState], actions: Sequence[int]
    ) -> dict[int, tuple[StepResult, str]]:
        """The steps the actions escalate: for each state whose action is k > 0, model k of the
        ladder writes its next step. One batched call per model, the models at the same time.
        Returns {index in `states`: (step, model name)}; kept drafts are absent."""
        by_level: dict[int, list[int]] = {}
        for i, action in enumerate(actions):
            if int(action) > 0:
                by_level.setdefault(int(action), []).append(i)
        names = {level: self.models[level].name for level in by_level}
        results = await asyncio.gather(
            *(
                self.escalate([states[i] for i in chosen], names[level])
                for level, chosen in by_level.items()
            )
        )
        return {
            i: (step, names[level])
            for (level, chosen), steps in zip(by_level.items(), results, strict=True)
            for i, step in zip(chosen, steps, strict=True)
        }

    async def verify(
        self, states: Sequence[ReasoningState], drafts: Sequence[StepResult], model: str
    ) -> np.ndarray:
        """Mean logprob of each draft under `model` (prompt logprobs; its cost is paid)."""
        requests = []
        for state, draft in zip(states, drafts, strict=True):
            ids = self._as_model_tokens(draft, model)
            context = tuple(state.contexts[model]) + tuple(ids)
            request = self._request(state, model, score_tokens=len(ids))
            requests.append(
                StepRequest(
                    prompt_token_ids=context,
                    max_tokens=1,
                    stop=request.stop,
                    score_tokens=len(ids),
                )
            )
        results = await self.engines[model].generate_batch(requests)
        scores = np.zeros(len(states))
        for i, (state, request, result) in enumerate(zip(states, requests, results, strict=True)):
            self._pay(state, model, request.prompt_token_ids, result)
            finite = [lp for lp in result.prompt_logprobs if math.isfinite(lp)]
            scores[i] = sum(finite) / len(finite) if finite else 0.0
        return scores

    async def score_with_prm(
        self, states: Sequence[ReasoningState], drafts: Sequence[StepResult]
    ) -> np.ndarray:
        """p(draft is right) from the process reward model (`cfg.prm`); its cost is paid. It
        reads the small model's context and the draft, ending at its step tag."""
        prm = self.cfg.prm
        if prm is None or prm.name not in self.engines:
            raise ValueError("prm_threshold needs a process reward model: set prm: in the config")
        requests = []
        for state, draft in zip(states, drafts, strict=True):
            ids = (*state.contexts[self.small], *draft.token_ids)
            if not ids or ids[-1] != prm.step_tag_id:
                ids = (*ids, prm.step_tag_id)
            requests.append(StepRequest(prompt_token_ids=ids, max_tokens=1))
        results = await self.engines[prm.name].generate_batch(requests)
        for state, request, result in zip(states, requests, results, strict=True):
            self._pay(state, prm.name, request.prompt_token_ids, result)
        return np.asarray([r.step_score for r in results], dtype=np.float64)

    def observe(
        self, states: Sequence[ReasoningState], drafts: Sequence[StepResult]
    ) -> Observation:
        """The features of each draft and trajectory (pipeline.features)."""
        max_step_tokens = self.by_name[self.small].sampling.max_step_tokens
        routing = self.cfg.routing
        prompt_scale = routing.prompt_length_scale or routing.max_total_tokens
        drafted = draft_stats_batch(drafts, max_step_tokens)
        dim = routing.draft_embedding_dim
        features = np.empty((len(drafts), NUM_FEATURES + dim), dtype=np.float32)
        features[:, NUM_FEATURES:] = text_embeddings([d.text for d in drafts], dim)
        for row, state, stats in zip(features, states, drafted, strict=True):
            trajectory = TrajectoryStats(
                step_index=len(state.steps),
                max_steps=self.cfg.routing.max_steps,
                cost_so_far=state._step_start_cost,
                cost_ceiling=self.cost_ceiling,
                escalated_steps=state.escalations,
                min_draft_prob_so_far=state.min_draft_prob,
                prev_escalated=bool(state.steps) and state.steps[-1].escalated,
                prompt_tokens=state.prompt_lengths[self.small],
                prompt_scale=prompt_scale,
            )
            row[:NUM_FEATURES] = feature_vector(stats, trajectory)
        return Observation(
            features=features,
            problem_ids=tuple(s.problem.id for s in states),
            step_indices=tuple(len(s.steps) for s in states),
            first_token_entropy=np.asarray([d.first_token_entropy for d in drafted]),
            questions=tuple(s.problem.question for s in states),
            steps_so_far=tuple(tuple(step.text for step in s.steps) for s in states),
            draft_texts=tuple(d.text for d in drafts),
        )

    def advance(
        self,
        state: ReasoningState,
        step: StepResult,
        model: str,
        *,
        draft: StepResult | None = None,
        features: Sequence[float] = (),
        score: float | None = None,
    ) -> None:
        """Keep `step` (written by `model`): append it to every context, check termination.

        `draft` is the small model's proposal when `step` replaced it (an escalation).
        """
        if features:  # features[0] is the draft's mean probability
            state.min_draft_prob = min(state.min_draft_prob, float(features[0]))
        for name in state.contexts:
            ids = step.token_ids if name == model else self._as_model_tokens(step, name, model)
            state.contexts[name].extend(ids)
        state.steps.append(
            StepRecord(
                model=model,
                text=step.text,
                token_ids=tuple(step.token_ids),
                cost=state.cost - state._step_start_cost,
                features=tuple(map(float, features)),
                score=score,
                draft_text=None if model == self.small or draft is None else draft.text,
                mean_logprob=_mean(step.token_logprobs),
            )
        )
        self._check_done(state, step, model)

    def _check_done(self, state: ReasoningState, step: StepResult, model: str) -> None:
        routing = self.cfg.routing
        generated = self._generated(state)
        limit = routing.max_total_tokens if state.token_limit is None else state.token_limit
        room = self.engines[model].max_model_len - len(state.contexts[model])
        if extract_answer(step.text, self.benchmark) is not None:
            state.stop_reason = "answer"
        elif step.finish_reason == "eos":
            state.stop_reason = "eos"
        elif len(state.steps) >= routing.max_steps:
            state.stop_reason = "max_steps"
        elif generated >= limit or room <= 0 or not step.token_ids:
            state.stop_reason = "max_tokens"
        if state.stop_reason is not None:
            state.done = True
            state.final_answer = extract_answer(state.solution, self.benchmark)

    def _generated(self, state: ReasoningState) -> int:
        """Tokens kept so far, in the small model's vocabulary."""
        return len(state.contexts[self.small]) - state.prompt_lengths[self.small]

    def _as_model_tokens(
        self, step: StepResult, model: str, writer: str | None = None
    ) -> list[int]:
        if self._shared_vocab or writer == model:
            return list(step.token_ids)
        return self.tokenizers[model].encode(step.text, add_special_tokens=False)

    # ------------------------------------------------------------------ the loop

    async def step(self, states: Sequence[ReasoningState], rule: RoutingRule) -> None:
        """One routed step for every state: draft, observe, decide, escalate, advance."""
        if not rule.drafts:  # e.g. large_only: no draft to decide on
            for state in states:
                state._step_start_cost = state.cost
            target = self.models[-1].name
            for state, result in zip(states, await self.escalate(states, target), strict=True):
                self.advance(state, result, target)
            return
        drafts, obs, routing = await self._drafted(states, rule)
        began = time.perf_counter()
        actions, scores = rule.decide_with_scores(obs)
        routing += time.perf_counter() - began
        await self._take(states, drafts, obs.features, actions, scores, routing, rule)

    async def _drafted(
        self, states: Sequence[ReasoningState], rule: RoutingRule
    ) -> tuple[list[StepResult], Observation, float]:
        """Each state's draft and its observation (with the verifier's or the PRM's scores when
        `rule` reads them), and the seconds spent on features, not waiting on engines."""
        drafts = await self.draft(states)
        began = time.perf_counter()
        obs = self.observe(states, drafts)
        routing = time.perf_counter() - began  # deciding, not waiting on engines
        if rule.needs_verifier:
            verifier = await self.verify(states, drafts, self.large)
            obs = dataclasses.replace(obs, verifier_mean_logprob=verifier)
        if rule.needs_prm:
            obs = dataclasses.replace(obs, prm_step_score=await self.score_with_prm(states, drafts))
        return drafts, obs, routing

    async def _take(
        self,
        states: Sequence[ReasoningState],
        drafts: Sequence[StepResult],
        features: np.ndarray,
        actions,
        scores: np.ndarray | None,
        routing: float,
        rule: RoutingRule,
    ) -> None:
        """Escalate the steps `actions` escalate, keep the other drafts: advance every state."""
        actions = np.asarray(actions, dtype=np.int64)
        if rule.num_actions != len(self.models):
            # A keep-or-escalate rule on a longer ladder escalates to the largest model.
            actions = np.where(actions > 0, len(self.models) - 1, 0)
        written = await self.write_escalated(states, actions)
        steps = [written.get(i, (draft, self.small)) for i, draft in enumerate(drafts)]
        for i, (state, (result, model)) in enumerate(zip(states, steps, strict=True)):
            state.routing_seconds += routing / len(states)  # a batch shares its decisions' time
            self.advance(
                state,
                result,
                model,
                draft=drafts[i],
                features=features[i].tolist(),
                score=None if scores is None else float(scores[i]),
            )

    async def solve(self, state: ReasoningState, rule: RoutingRule) -> AsyncIterator[StepRecord]:
        """Route one problem to the end, yielding each kept step as soon as it is taken.

        The Serve router streams these; concurrent calls batch inside the engines."""
        while not state.done:
            await self.step([state], rule)
            yield state.steps[-1]

    async def run(
        self,
        problems: Sequence[Problem],
        rule: RoutingRule,
        concurrency: int = 64,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[ReasoningState]:
        """Solve `problems` under `rule`, `concurrency` at a time; states come back in order.

        Every problem in flight takes one step per round, so the engines see a batch of
        `concurrency` requests; a finished problem's slot is refilled at once.
        """
        states = [self.start(p) for p in problems]
        waiting = list(reversed(states))
        active: list[ReasoningState] = []
        finished = 0
        started = time.perf_counter()
        while waiting or active:
            while waiting and len(active) < concurrency:
                active.append(waiting.pop())
            await self.step(active, rule)
            still = [s for s in active if not s.done]
            finished += len(active) - len(still)
            active = still
            if progress is not None:
                progress(finished, len(states))
        log.info("solved %d problems in %.1f s", len(states), time.perf_counter() - started)
        return states

    async def run_thresholds(
        self,
        problems: Sequence[Problem],
        rule: ThresholdRule,
        thresholds: Iterable[float],
        concurrency: int = 64,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[float, list[ReasoningState]]:
        """`run(problems, rule.with_threshold(t))` for every threshold t, in one pass.

        A rule that decides by score alone (`ThresholdRule.decides_by_score_alone`) escalates a
        draft at every threshold up to its score and keeps it above, so the runs of all
        thresholds share a problem's trajectory until a step's score falls between two of them.
        Each problem is solved once per distinct trajectory: a branch holds the thresholds that
        reached its state and forks where they part (the escalating ones go on in a copy).
        Calibration's grid of ~225 thresholds takes a handful of trajectories per problem
        instead of 225 runs. Returns {threshold: the states in `problems`' order}; every
        threshold's states are those its own `run` gives (same drafts, decisions and costs), but
        for a network's float32 score, which moves in the 7th digit with the batch a draft is
        scored in, so a draft scored within that of a threshold may be decided either way (as in
        any two runs that batch it differently). `concurrency` problems are started at a time;
        their branches step together, and every trajectory is held until the pass ends."""
        if not (isinstance(rule, ThresholdRule) and rule.decides_by_score_alone()):
            raise ValueError(f"{rule.name}: its decisions are not its score against a threshold")
        kappas = np.asarray(sorted({float(t) for t in thresholds}), dtype=np.float64)
        if kappas.size == 0:
            return {}
        leaves: list[list[_Branch]] = [[] for _ in problems]
        waiting = list(reversed(range(len(problems))))
        active: list[_Branch] = []
        in_flight = finished = 0  # problems with a branch still going / with all of them done
        started = time.perf_counter()
        while waiting or active:
            while waiting and in_flight < concurrency:
                index = waiting.pop()
                active.append(_Branch(index, self.start(problems[index]), 0, kappas.size))
                in_flight += 1
            stepped = await self._fork_step(active, rule, kappas)
            active = [b for b in stepped if not b.state.done]
            going = {b.problem for b in active}
            for branch in stepped:
                if branch.state.done:
                    leaves[branch.problem].append(branch)
            ended = {b.problem for b in stepped} - going
            in_flight -= len(ended)
            finished += len(ended)
            if progress is not None:
                progress(finished, len(problems))
        by_index: list[list] = [[None] * len(problems) for _ in range(kappas.size)]
        for index, branches in enumerate(leaves):
            for branch in branches:
                for j in range(branch.low, branch.high):
                    by_index[j][index] = branch.state
        log.info(
            "solved %d problems at %d thresholds along %d trajectories in %.1f s",
            len(problems),
            kappas.size,
            sum(len(branches) for branches in leaves),
            time.perf_counter() - started,
        )
        return dict(zip(kappas.tolist(), by_index, strict=True))

    async def _fork_step(
        self, branches: list[_Branch], rule: ThresholdRule, kappas: np.ndarray
    ) -> list[_Branch]:
        """One step of every branch; a branch whose thresholds part at this draft's score forks
        (thresholds up to the score escalate, those above keep the draft)."""
        states = [b.state for b in branches]
        drafts, obs, routing = await self._drafted(states, rule)
        began = time.perf_counter()
        scores = np.asarray(rule.scores(obs), dtype=np.float64)
        routing += time.perf_counter() - began
        cuts = rule.escalating(scores, kappas)  # kappas[low:cut] escalate, kappas[cut:high] keep
        escalate = rule.num_actions - 1
        stepped, rows, actions = [], [], []
        for row, (branch, cut) in enumerate(zip(branches, cuts.tolist(), strict=True)):
            cut = min(max(cut, branch.low), branch.high)
            if branch.low < cut:  # some thresholds escalate: in a copy if others keep
                state = branch.state.fork() if cut < branch.high else branch.state
                stepped.append(_Branch(branch.problem, state, branch.low, cut))
                rows.append(row)
                actions.append(escalate)
            if cut < branch.high:
                stepped.append(_Branch(branch.problem, branch.state, cut, branch.high))
                rows.append(row)
                actions.append(0)
        await self._take(
            [b.state for b in stepped],
            [drafts[row] for row in rows],
            obs.features[rows],
            actions,
            scores[rows],
            routing,
            rule,
        )
        return stepped

    # ------------------------------------------------------------------ grading

    def is_correct(self, state: ReasoningState) -> bool:
        return grade(state.solution, state.problem.gold_answer, self.benchmark).correct


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


@dataclasses.dataclass
class _Branch:
    """One trajectory of `Controller.run_thresholds`: problem `problem`'s state, which the
    thresholds kappas[low:high] all reach."""

    problem: int
    state: ReasoningState
    low: int
    high: int
