"""Train the testbed process reward model on the small model's own drafts, and measure it.

- Drafts: the small model solves the TRAIN split alone (`small_only`, greedy, through the shared
  controller and the step cache, as `steproute evaluate` would), optionally the large model too
  (`large_only`); every step is graded with `tasks.grade_step`, which is the PRM's label. One
  sequence per problem: the prompt and its steps as the small model's token ids, a label at the
  newline ending each step (`pipeline.testbed.prm`).
- Or, with `PRMSpec.labels = "monte_carlo"`, labels any benchmark can produce: the guided paths
  of `pipeline.labels` (a draft is right when the large model still finishes correctly after
  it), as `monte_carlo_sequences` lays them out.
- A slice of the train problems is held out (`PRMSpec.validation_fraction`): hyper-parameters
  are chosen on it, never on the test split.
- Measure: the step-level AUROC of 1 − p(right) for "this step is wrong" on the small model's
  drafts of TEST-split problems, from the torch model and through a real vLLM pooling engine
  loading the saved folder (the two agree to float rounding), beside the AUROC of the small
  model's own confidence (−mean logprob) on the same steps.

A caller scores a draft as the PRM was trained: the small model's context ids (prompt and kept
steps) plus `tagged_step(draft ids)`, and reads p(right) from the last row vLLM returns.

All numbers are TESTBED numbers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from pipeline.config import ExperimentConfig
from pipeline.controller import Controller
from pipeline.data import Problem
from pipeline.engines.cache import StepCache
from pipeline.labels import monte_carlo_labels
from pipeline.metrics import auroc
from pipeline.prompts import load_tokenizers
from pipeline.rules import make_rule
from pipeline.testbed.prm import (
    STEP_TAG_ID,
    LabelledSequence,
    PRMSpec,
    save_prm,
    step_probabilities,
    tagged_step,
    train_prm,
)
from pipeline.testbed.tasks import grade_step
from pipeline.trajectory import ReasoningState

log = logging.getLogger(__name__)

__all__ = [
    "PRMReport",
    "labelled_sequence",
    "monte_carlo_sequences",
    "train_testbed_prm",
    "vllm_step_probabilities",
]


@dataclass
class PRMReport:
    folder: str
    parameters: int
    train_seconds: float
    train_problems: int  # the train-split problems trained on (the held-out slice excluded)
    train_steps: int
    train_wrong_steps: int
    validation_problems: int
    validation_auroc: float  # on the held-out slice of train problems
    test_problems: int
    test_steps: int
    test_wrong_steps: int
    test_auroc: float  # torch: 1 − p(right) for "step is wrong", test-split small drafts
    vllm_test_auroc: float  # the same through vLLM's pooling runner on the saved folder
    vllm_max_difference: float  # largest |p(right) torch − p(right) vLLM| over the test steps
    confidence_auroc: float  # the small model's −mean logprob on the same test steps


def labelled_sequence(state: ReasoningState, model: str) -> LabelledSequence:
    """`state`'s prompt and steps as `model`'s token ids (the models share a vocabulary on the
    testbed), each step ending in the step tag and graded by `grade_step`."""
    ids = list(state.contexts[model][: state.prompt_lengths[model]])
    texts = [step.text for step in state.steps]
    positions, right = [], []
    for index, step in enumerate(state.steps):
        ids += tagged_step(step.token_ids)
        positions.append(len(ids) - 1)
        right.append(grade_step(state.problem.question, texts[:index], step.text))
    return LabelledSequence(tuple(ids), tuple(positions), tuple(right))


def monte_carlo_sequences(
    path: ReasoningState, model: str, encode: Callable[[str], list[int]]
) -> list[LabelledSequence]:
    """A guided path of `pipeline.labels` as labelled sequences in `model`'s token ids: the path
    itself, each kept draft labelled right (the large model still finished from it), and per
    escalated step its prefix plus the discarded draft (`encode`d), labelled wrong."""
    ids = list(path.contexts[model][: path.prompt_lengths[model]])
    positions, sequences = [], []
    for step in path.steps:
        if step.model == model:
            ids += tagged_step(step.token_ids)
            positions.append(len(ids) - 1)
            continue
        if step.draft_text is not None:
            discarded = ids + tagged_step(encode(step.draft_text))
            sequences.append(LabelledSequence(tuple(discarded), (len(discarded) - 1,), (False,)))
        ids += tagged_step(step.token_ids)
    if positions:
        sequences.insert(
            0, LabelledSequence(tuple(ids), tuple(positions), (True,) * len(positions))
        )
    return sequences


async def _drafts(
    cfg: ExperimentConfig,
    problem_sets: dict[str, tuple[str, list[Problem]]],
    engines,
    guided: Sequence[Problem] = (),
) -> dict[str, list[ReasoningState]]:
    """Solve each named (rule, problems) pair, and under "guided" the Monte-Carlo guided paths
    of the `guided` problems (`pipeline.labels`); engines are started in this process unless
    given, and then their steps go through the shared step cache (a rerun is lookups)."""
    from pipeline.engines.launch import engine_pool

    cache = None if engines is not None else StepCache(cfg.step_cache_dir)
    async with engine_pool(cfg.models, use_ray=False, cache=cache, engines=engines) as live:
        controller = Controller(cfg, live)
        concurrency = cfg.evaluation.concurrency
        solved = {
            name: await controller.run(problems, make_rule(rule), concurrency=concurrency)
            for name, (rule, problems) in problem_sets.items()
        }
        if guided:
            labels = await monte_carlo_labels(controller, guided, concurrency=concurrency)
            solved["guided"] = list(labels.paths)
        return solved


def vllm_step_probabilities(
    folder: str | Path, sequences: Sequence[LabelledSequence]
) -> list[list[float]]:
    """p(right) at every labelled step of each sequence, from vLLM's pooling runner (STEP
    pooling at the step tag) loading the PRM folder: the path a serving engine takes."""
    from pipeline.engines.vllm_engine import configure_cpu_environment

    configure_cpu_environment()
    from vllm import LLM
    from vllm.config import PoolerConfig
    from vllm.inputs import TokensPrompt

    llm = LLM(
        model=str(folder),
        runner="pooling",
        dtype="float32",
        enforce_eager=True,
        kv_cache_memory_bytes=64 << 20,
        max_model_len=512,
        pooler_config=PoolerConfig(step_tag_id=STEP_TAG_ID),
    )
    prompts = [TokensPrompt(prompt_token_ids=list(s.input_ids)) for s in sequences]
    outputs = llm.encode(prompts, pooling_task="token_classify", use_tqdm=False)
    scores = []
    for sequence, output in zip(sequences, outputs, strict=True):
        rows = output.outputs.data  # one (p wrong, p right) row per step tag, the prompt's too
        tags = [i for i, token in enumerate(sequence.input_ids) if token == STEP_TAG_ID]
        row_of = {position: row for row, position in enumerate(tags)}
        scores.append([float(rows[row_of[p], 1]) for p in sequence.positions])
    del llm  # the in-process engine core goes with it
    return scores


def _flat(values: Sequence[Sequence]) -> list:
    return [v for row in values for v in row]


def _split(problems: list[Problem], fraction: float, seed: int):
    """(fit, held-out) slices of the train problems, by a seeded shuffle of their ids."""
    ids = sorted(p.id for p in problems)
    random.Random(seed).shuffle(ids)
    held_out = set(ids[: math.floor(fraction * len(ids))])
    return [p for p in problems if p.id not in held_out], [p for p in problems if p.id in held_out]


async def train_testbed_prm(
    cfg: ExperimentConfig,
    spec: PRMSpec,
    output_dir: str | Path,
    train_problems: list[Problem],
    test_problems: list[Problem],
    engines: dict | None = None,
    progress: Callable[[int, int, float, float], None] | None = None,
) -> PRMReport:
    """Collect and grade drafts, train the PRM on the train problems (less a held-out slice),
    save it to `output_dir` and measure it on the test problems' small drafts."""
    fit, held_out = _split(train_problems, spec.validation_fraction, spec.seed)
    monte_carlo = spec.labels == "monte_carlo"
    problem_sets = {"test": ("small_only", test_problems)}
    if not monte_carlo:
        problem_sets["train"] = ("small_only", train_problems)
    if spec.large_drafts:
        problem_sets["large"] = ("large_only", fit)
    drafts = await _drafts(cfg, problem_sets, engines, train_problems if monte_carlo else [])
    small = cfg.models[0].name
    held_ids = {p.id for p in held_out}
    if monte_carlo:
        tokenizer = load_tokenizers(cfg.models[:1])[small]
        encode = partial(tokenizer.encode, add_special_tokens=False)
        sequences = {
            p.problem.id: monte_carlo_sequences(p, small, encode) for p in drafts["guided"]
        }
    else:
        sequences = {s.problem.id: [labelled_sequence(s, small)] for s in drafts["train"]}
    train = _flat(v for k, v in sequences.items() if k not in held_ids)
    validation = _flat(v for k, v in sequences.items() if k in held_ids)
    test = [labelled_sequence(s, small) for s in drafts["test"]]  # graded: measuring only
    small_train_steps = _flat(s.right for s in train)
    train += [labelled_sequence(s, small) for s in drafts.get("large", [])]

    model, record = train_prm(spec, train, validation, progress)
    folder = save_prm(model, output_dir)
    wrong = [not right for right in _flat(s.right for s in test)]
    torch_p = _flat(step_probabilities(model, test))
    vllm_p = _flat(vllm_step_probabilities(folder, test))
    confidence = [-step.mean_logprob for state in drafts["test"] for step in state.steps]
    validation_wrong = [not right for right in _flat(s.right for s in validation)]
    validation_p = _flat(step_probabilities(model, validation))
    report = PRMReport(
        folder=str(folder),
        parameters=record["parameters"],
        train_seconds=record["train_seconds"],
        train_problems=len(fit),
        train_steps=len(small_train_steps),
        train_wrong_steps=small_train_steps.count(False),
        validation_problems=len(held_out),
        validation_auroc=auroc([1 - p for p in validation_p], validation_wrong),
        test_problems=len(test_problems),
        test_steps=len(wrong),
        test_wrong_steps=sum(wrong),
        test_auroc=auroc([1 - p for p in torch_p], wrong),
        vllm_test_auroc=auroc([1 - p for p in vllm_p], wrong),
        vllm_max_difference=max(
            (abs(a - b) for a, b in zip(torch_p, vllm_p, strict=True)), default=0.0
        ),
        confidence_auroc=auroc(confidence, wrong),
    )
    record["measured"] = {k: v for k, v in dataclasses.asdict(report).items() if k != "folder"}
    (folder / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return report
