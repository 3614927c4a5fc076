"""Monte-Carlo step labels on the real testbed engines, and the supervised fit on them."""

from __future__ import annotations

import asyncio
from functools import partial

import numpy as np
import pytest
import torch

from pipeline.controller import Controller
from pipeline.data import load_split
from pipeline.labels import StepLabels, fit_policy, monte_carlo_labels
from pipeline.metrics import auroc
from pipeline.policy import RouterPolicy
from pipeline.prompts import load_tokenizers
from pipeline.testbed.prm import STEP_TAG_ID, tagged_step
from pipeline.testbed.tasks import grade_step
from pipeline.testbed_prm import monte_carlo_sequences


@pytest.fixture(scope="module")
def labelled(testbed_cfg, testbed_engines) -> StepLabels:
    problems = load_split(testbed_cfg.dataset, "train")[:40]
    controller = Controller(testbed_cfg, testbed_engines)
    return asyncio.run(monte_carlo_labels(controller, problems, concurrency=16))


def test_every_draft_on_the_guided_path_is_labelled_once(labelled) -> None:
    by_problem = {path.problem.id: path for path in labelled.paths}
    assert len(labelled.keep_ok) == sum(len(path.steps) for path in labelled.paths)
    assert sorted(zip(labelled.problem_ids, labelled.step_indices, strict=True)) == sorted(
        (pid, k) for pid, path in by_problem.items() for k in range(len(path.steps))
    )
    # A draft labelled unsound was replaced by the completer; a sound one was kept.
    for pid, k, ok in zip(
        labelled.problem_ids, labelled.step_indices, labelled.keep_ok, strict=True
    ):
        step = by_problem[pid].steps[k]
        assert step.escalated == (not ok)
        assert step.model == ("small" if ok else "large")
    assert labelled.features.shape == (
        len(labelled.keep_ok),
        len(labelled.paths[0].steps[0].features),
    )


def test_labels_from_final_answers_find_the_wrong_steps(
    labelled, testbed_cfg, testbed_engines
) -> None:
    """The labels use final answers only; on the testbed, where errors are local, they should
    agree with the step grader (measurement only: the grader never feeds the labels)."""
    by_problem = {path.problem.id: path for path in labelled.paths}
    wrong = []
    for pid, k in zip(labelled.problem_ids, labelled.step_indices, strict=True):
        path = by_problem[pid]
        step = path.steps[k]
        draft = step.draft_text if step.escalated else step.text
        prefix = [s.text for s in path.steps[:k]]
        wrong.append(not grade_step(path.problem.question, prefix, draft))
    wrong = np.asarray(wrong)
    assert wrong.any() and not wrong.all()
    agreement = float(np.mean(wrong == ~labelled.keep_ok))
    assert agreement >= 0.95, agreement
    # The guided path repairs what it labels: its answers are (nearly) all right.
    controller = Controller(testbed_cfg, testbed_engines)
    assert np.mean([controller.is_correct(path) for path in labelled.paths]) >= 0.9


def test_fit_policy_learns_the_labels_ranking() -> None:
    rng = np.random.default_rng(0)
    features = rng.random((600, 5)).astype(np.float32)
    keep_ok = (
        features[:, 2] + 0.1 * rng.standard_normal(600) < 0.6
    )  # escalate when feature 2 is high
    labels = StepLabels(features, keep_ok, (), (), (), rollouts=0)
    torch.manual_seed(0)
    policy = RouterPolicy((16,), 2, 5)
    losses = fit_policy(policy, labels, epochs=30, lr=1e-2, seed=0)
    after = policy.escalation_probability(features).numpy()
    assert losses[-1] < 0.5 * losses[0]
    assert auroc(after.tolist(), (~keep_ok).tolist()) > 0.95


def test_fit_policy_refuses_an_empty_label_set() -> None:
    empty = StepLabels(np.zeros((0, 3), np.float32), np.zeros(0, bool), (), (), (), rollouts=0)
    with pytest.raises(ValueError, match="no labelled drafts"):
        fit_policy(RouterPolicy((), 2, 3), empty)


def test_guided_paths_become_prm_sequences_with_their_labels(labelled, testbed_cfg) -> None:
    """`steproute testbed train-prm --labels monte_carlo` trains on these: each kept draft right,
    each discarded draft wrong, read at the step tag after it on the context it was drafted in."""
    tokenizer = load_tokenizers(testbed_cfg.models[:1])["small"]
    encode = partial(tokenizer.encode, add_special_tokens=False)
    drafts_of = zip(labelled.problem_ids, labelled.step_indices, strict=True)
    keep_ok = dict(zip(drafts_of, labelled.keep_ok, strict=True))
    discarded_drafts = 0
    for path in labelled.paths:
        sequences = monte_carlo_sequences(path, "small", encode)
        labels = sorted(right for s in sequences for right in s.right)
        assert labels == sorted(keep_ok[path.problem.id, k] for k in range(len(path.steps)))
        prompt = tuple(path.contexts["small"][: path.prompt_lengths["small"]])
        for sequence in sequences:
            assert sequence.input_ids[: len(prompt)] == prompt
            assert all(sequence.input_ids[p] == STEP_TAG_ID for p in sequence.positions)
        wrong = [s for s in sequences if s.right == (False,)]
        drafts = [step.draft_text for step in path.steps if step.escalated]
        assert len(wrong) == len(drafts)
        for sequence, draft in zip(wrong, drafts, strict=True):
            ids = tuple(tagged_step(encode(draft)))
            assert sequence.input_ids[-len(ids) :] == ids
        discarded_drafts += len(drafts)
    assert discarded_drafts > 0  # the fixture's problems hold escalations to check
