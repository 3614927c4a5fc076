"""The observation the router sees at each step: a fixed-order vector of normalized features.

Every feature lies in [0, 1]. The order is stable (`FEATURE_NAMES`); the policy network, the
RLlib observation space and the Serve router all depend on it, so append, never reorder.

Draft features describe the small model's proposed step; trajectory features describe the
problem so far. An `Observation` is what a routing rule receives for a batch of drafts: their
feature rows and, for rules that read them, the drafts' texts and problems.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import itertools
import math
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FEATURE_NAMES",
    "LOGPROB_FEATURES",
    "NUM_FEATURES",
    "DraftStats",
    "Observation",
    "TrajectoryStats",
    "arithmetic_error",
    "draft_stats",
    "draft_stats_batch",
    "feature_vector",
    "text_embedding",
    "text_embeddings",
    "top_k_entropies",
    "top_k_entropy",
]

FEATURE_NAMES: tuple[str, ...] = (
    "draft/mean_prob",  # exp(mean token logprob): geometric-mean probability of the draft
    "draft/min_prob",  # exp(min token logprob): the least sure token
    "draft/last_prob",  # exp(logprob of the last token)
    "draft/mean_entropy",  # mean entropy of the renormalized top-k, divided by log(k)
    "draft/length",  # tokens / max_step_tokens
    "draft/has_final_answer",  # 1 if the draft states a final answer
    "traj/step_fraction",  # step index / max_steps
    "traj/cost_fraction",  # cost so far / cost ceiling (a longest large-only trajectory), clipped at 1
    "traj/escalated_fraction",  # fraction of earlier steps written by a larger model
    "traj/min_draft_prob_so_far",  # lowest draft mean_prob of earlier steps (1 at the start)
    "traj/prev_escalated",  # 1 if the previous step was escalated
    "traj/prompt_length",  # prompt tokens / routing.prompt_length_scale, clipped at 1
    "draft/arithmetic_error",  # 1 if a calculator contradicts an equation the draft writes
)
NUM_FEATURES = len(FEATURE_NAMES)


@dataclass(frozen=True)
class DraftStats:
    mean_prob: float
    min_prob: float
    last_prob: float
    mean_entropy: float
    length: float
    has_final_answer: float
    first_token_entropy: float  # not a feature: the `first_token_entropy` rule's score
    arithmetic_error: float = 0.0


@dataclass(frozen=True)
class TrajectoryStats:
    step_index: int
    max_steps: int
    cost_so_far: float
    cost_ceiling: float  # the cost of a longest large-only trajectory: cost_so_far saturates there
    escalated_steps: int
    min_draft_prob_so_far: float
    prev_escalated: bool
    prompt_tokens: int = 0  # the question as the small model reads it
    prompt_scale: int = 0  # prompt tokens at which the feature saturates (0: feature is 0)


@dataclass(frozen=True)
class Observation:
    """What a routing rule sees for a batch of drafts."""

    features: np.ndarray  # (batch, NUM_FEATURES [+ draft_embedding_dim]), FEATURE_NAMES order
    problem_ids: tuple[str, ...]
    step_indices: tuple[int, ...]
    verifier_mean_logprob: np.ndarray | None = None  # the large model's score of each draft
    first_token_entropy: np.ndarray | None = None  # each draft's `DraftStats.first_token_entropy`
    prm_step_score: np.ndarray | None = None  # the process reward model's p(draft is right)
    # Texts, for rules that read them (the testbed's `oracle` grades each draft).
    questions: tuple[str, ...] = ()
    steps_so_far: tuple[tuple[str, ...], ...] = ()  # each trajectory's kept steps
    draft_texts: tuple[str, ...] = ()


def top_k_entropy(top_logprobs: Sequence[float]) -> float:
    """Entropy of the top-k distribution renormalized, divided by log(k): 0 = sure, 1 = flat."""
    return float(top_k_entropies([top_logprobs])[0])


def top_k_entropies(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """`top_k_entropy` of every row at once (rows may differ in length): one numpy pass over all
    of a batch's tokens instead of a Python loop per token (the env computes it for every draft
    token). Non-finite entries do not count; a row with fewer than 2 finite ones is 0."""
    if not rows:
        return np.zeros(0)
    widths = {len(row) for row in rows}
    if len(widths) == 1 and 0 not in widths:  # the common case: every token has k candidates
        logprobs = np.array(rows, dtype=np.float64)
    else:
        logprobs = np.full((len(rows), max(1, *widths)), -np.inf)
        for i, row in enumerate(rows):
            logprobs[i, : len(row)] = row
    finite = np.isfinite(logprobs)  # NaN and -inf alike
    counts = finite.sum(axis=1)
    logprobs[~finite] = -np.inf
    peak = np.where(counts > 0, logprobs.max(axis=1), 0.0)[:, None]
    weights = np.exp(logprobs - peak)  # -inf -> 0
    with np.errstate(invalid="ignore", divide="ignore"):  # rows with no finite entry: 0 / 0
        probs = weights / _row_sums(weights)[:, None]
    positive = probs > 0  # False for NaN
    logs = np.log(np.where(positive, probs, 1.0))
    entropy = -_row_sums(np.where(positive, probs * logs, 0.0))
    result = np.zeros(len(rows))
    spread = counts >= 2
    # A flat top-k rounds to 1 + 2e-16: clipped.
    result[spread] = np.minimum(1.0, entropy[spread] / np.log(counts[spread]))
    return result


def _row_sums(values: np.ndarray) -> np.ndarray:
    """Each row's sum, left to right: the same float whatever the padding (numpy's own sum
    regroups the terms of rows longer than 8), so a row's entropy does not depend on its batch."""
    total = values[:, 0].copy()
    for column in values.T[1:]:
        total += column
    return total


LOGPROB_FEATURES = (
    "draft/mean_prob",
    "draft/min_prob",
    "draft/last_prob",
    "draft/mean_entropy",
    "draft/length",
)
"""The features read off the draft's logprobs: neutral (probabilities 1, entropy and length 0)
for a draft whose server returned none, as is `first_token_entropy`."""


# A chain of arithmetic expressions joined by "=", e.g. `47+38=85` or `$1,200 / 4 = $300`.
_CHAIN = re.compile(r"[\d.+\-*/() ]+(?:=[\d.+\-*/() ]+)+")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")  # 1,200 -> 1200
_TIMES = re.compile(r"(?<=\d)\s*x\s*(?=\d)")  # 3 x 4 -> 3*4
_CALCULATION = re.compile(r"\d\s*[+\-*/]\s*[\d(]")  # an operator between operands
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _evaluate(node: ast.AST) -> float:
    """The value of a parsed +, -, *, / expression over numbers; ValueError for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        try:
            return _BINARY[type(node.op)](_evaluate(node.left), _evaluate(node.right))
        except ZeroDivisionError as error:
            raise ValueError("division by zero") from error
    raise ValueError("not plain arithmetic")


def _value(expression: str) -> tuple[float, int] | None:
    """An expression's value and the decimals its last number is written with (the rounding a
    written result may carry); None if it is not plain arithmetic."""
    expression = expression.strip().rstrip(".")
    if not expression:
        return None
    try:
        value = _evaluate(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ValueError, OverflowError, RecursionError):
        return None
    decimals = expression.rsplit(".", 1)[1] if "." in expression else ""
    return value, len(decimals) if decimals.isdigit() else 0


def arithmetic_error(text: str) -> float:
    """1.0 if a calculator contradicts an equation written in `text`, else 0.0.

    A check any math benchmark allows (a calculator, as GSM8K's `<<48/2=24>>` annotations use),
    not the testbed's step grader: it reads only the draft, finds chains like `47+38=85` or
    `$1,200 × 3 = $3,600` whose first side has an operator, and compares each side with the
    next, to the rounding the right side is written with. Text it cannot read as arithmetic
    (words, units, percentages) contradicts nothing."""
    text = text.replace("×", "*").replace("÷", "/").replace("$", "")
    text = _TIMES.sub("*", _THOUSANDS.sub("", text))
    for chain in _CHAIN.findall(text):
        sides = chain.split("=")
        if not _CALCULATION.search(sides[0]):
            continue  # `of 50 = 10`: the left side is not a calculation
        values = [_value(side) for side in sides]
        for left, right in zip(values, values[1:], strict=False):
            if left is None or right is None:
                break
            tolerance = 0.5 * 10.0 ** -right[1] + 1e-9 * max(1.0, abs(right[0]))
            if abs(left[0] - right[0]) > tolerance:
                return 1.0
    return 0.0


FINAL_ANSWER_MARKERS = ("The answer is", "\\boxed")


def draft_stats(
    token_logprobs: Sequence[float],
    top_logprobs: Sequence[Sequence[float]],
    text: str,
    max_step_tokens: int,
    final_answer_markers: Sequence[str] = FINAL_ANSWER_MARKERS,
) -> DraftStats:
    return _draft_stats(
        token_logprobs, top_k_entropies(top_logprobs), text, max_step_tokens, final_answer_markers
    )


def draft_stats_batch(
    drafts: Sequence,
    max_step_tokens: int,
    final_answer_markers: Sequence[str] = FINAL_ANSWER_MARKERS,
) -> list[DraftStats]:
    """`draft_stats` of each draft (anything with `token_logprobs`, `top_logprobs` and `text`,
    e.g. a `StepResult`), the top-k entropies of all their tokens in one numpy pass."""
    if not drafts:
        return []
    entropies = top_k_entropies([top for d in drafts for top in d.top_logprobs])
    per_draft = np.split(entropies, np.cumsum([len(d.top_logprobs) for d in drafts])[:-1])
    return [
        _draft_stats(d.token_logprobs, e, d.text, max_step_tokens, final_answer_markers)
        for d, e in zip(drafts, per_draft, strict=True)
    ]


def _draft_stats(
    token_logprobs: Sequence[float],
    entropies: np.ndarray,
    text: str,
    max_step_tokens: int,
    final_answer_markers: Sequence[str],
) -> DraftStats:
    """The draft's statistics, given the top-k entropy of each of its tokens."""
    logprobs = [lp for lp in token_logprobs if math.isfinite(lp)]
    calculator = arithmetic_error(text)
    # GlimpRouter's signal: how unsure the model is as it starts the step.
    first_entropy = float(entropies[0]) if len(entropies) else 0.0
    if not logprobs:
        has_answer = float(any(m in text for m in final_answer_markers))
        return DraftStats(1.0, 1.0, 1.0, 0.0, 0.0, has_answer, first_entropy, calculator)
    return DraftStats(
        mean_prob=math.exp(sum(logprobs) / len(logprobs)),
        min_prob=math.exp(min(logprobs)),
        last_prob=math.exp(logprobs[-1]),
        mean_entropy=sum(entropies.tolist()) / len(entropies) if len(entropies) else 0.0,
        length=min(1.0, len(token_logprobs) / max(1, max_step_tokens)),
        has_final_answer=float(any(m in text for m in final_answer_markers)),
        first_token_entropy=first_entropy,
        arithmetic_error=calculator,
    )


def feature_vector(draft: DraftStats, trajectory: TrajectoryStats) -> list[float]:
    """The observation, in `FEATURE_NAMES` order, every entry in [0, 1]."""
    t = trajectory
    steps_before = max(1, t.step_index)
    values = [
        draft.mean_prob,
        draft.min_prob,
        draft.last_prob,
        draft.mean_entropy,
        draft.length,
        draft.has_final_answer,
        min(1.0, t.step_index / max(1, t.max_steps)),
        min(1.0, t.cost_so_far / t.cost_ceiling) if t.cost_ceiling > 0 else 0.0,
        t.escalated_steps / steps_before if t.step_index else 0.0,
        t.min_draft_prob_so_far,
        float(t.prev_escalated),
        t.prompt_tokens / t.prompt_scale if t.prompt_scale > 0 else 0.0,
        draft.arithmetic_error,
    ]
    return [min(1.0, max(0.0, v)) for v in values]


def text_embedding(text: str, dim: int) -> list[float]:
    """A small embedding of the draft text, appended after the features when
    `routing.draft_embedding_dim` > 0: signed hashing of character trigrams, L2-normalized, then
    mapped to [0, 1] by (x + 1) / 2. Needs no model download; the same text always gives the
    same vector."""
    return text_embeddings([text], dim)[0].tolist()


def text_embeddings(texts: Sequence[str], dim: int) -> np.ndarray:
    """`text_embedding` of each text, as the rows of a (len(texts), dim) array."""
    if dim <= 0:
        return np.zeros((len(texts), max(0, dim)))
    # Every text's trigrams as (slot in the flattened array, sign), then one weighted count.
    slots = [
        (row * dim + bucket, sign)
        for row, text in enumerate(texts)
        for padded in (f"  {text} ",)
        for bucket, sign in map(_trigram_slot, _trigrams(padded), itertools.repeat(dim))
    ]
    flat, signs = zip(*slots, strict=True) if slots else ((), ())
    counts = np.bincount(np.asarray(flat, np.int64), np.asarray(signs), len(texts) * dim)
    vectors = counts.reshape(len(texts), dim)
    # The entries are whole numbers, so their sums (and sums of squares) are exact in any order:
    # numpy gives the same floats as a Python loop, in a fraction of the time.
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    norms[norms == 0] = 1.0
    return (vectors / norms[:, None] + 1.0) / 2.0


def _trigrams(padded: str) -> list[str]:
    return [padded[i : i + 3] for i in range(len(padded) - 2)]


@functools.lru_cache(maxsize=1 << 16)
def _trigram_slot(trigram: str, dim: int) -> tuple[int, float]:
    """The bucket and sign of `trigram` in a `dim`-wide `text_embedding` (steps repeat most of
    their trigrams, so their hashes are kept)."""
    digest = hashlib.blake2b(trigram.encode(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "little") % dim, 1.0 if digest[4] & 1 else -1.0
