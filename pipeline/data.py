"""Benchmark problems: one `Problem` record, loaders for GSM8K / MATH500 / Omni-MATH, and splits.

Every loader reads either a local file/folder (the same files Hugging Face serves) or, when only
a Hugging Face id is configured, the hub through `datasets`. Splits hash each problem's
normalized question with the seed (the testbed's: its id), never the row position, so they do
not move when a file is reordered, and a question that occurs twice sits in one split.

The protocol (`split_dataset`): with a training source configured, train and calibration are a
hashed split of it and test is the whole main source (GSM8K: train.jsonl -> train/calibration,
all 1,319 of test.jsonl -> test); without one, the main source is split three ways.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.config import DatasetConfig, SplitFractions
from pipeline.problem import Problem  # re-exported: the record the loaders return

log = logging.getLogger(__name__)

SPLITS = ("train", "calibration", "test")

__all__ = [
    "SPLITS",
    "DataError",
    "DatasetSplits",
    "Problem",
    "assign_split",
    "load_budget_pool",
    "load_problems",
    "load_split",
    "normalize_question",
    "split_dataset",
    "split_problems",
]


class DataError(ValueError):
    """A benchmark file is missing or malformed. The message names the file and the line."""


# --------------------------------------------------------------------------------------------
# Row parsers: one per benchmark, shared by the local-file and the Hugging Face paths.
# Each returns (id_hint, question, gold, meta); id_hint=None means "hash the content".
# --------------------------------------------------------------------------------------------

Row = dict[str, Any]
Parsed = tuple[str | None, str, str, dict[str, Any]]


def _require(row: Row, *keys: str) -> list[Any]:
    missing = [k for k in keys if k not in row]
    if missing:
        raise KeyError(f"missing field(s) {missing}; present: {sorted(row)}")
    values = [row[k] for k in keys]
    for key, value in zip(keys, values, strict=True):
        if not isinstance(value, str):
            raise TypeError(f"field '{key}' must be a string, got {type(value).__name__}")
    return values


def _parse_gsm8k(row: Row) -> Parsed:
    question, answer = _require(row, "question", "answer")
    if "#### " not in answer:
        raise ValueError("field 'answer' has no '#### ' final-answer marker")
    gold = answer.rsplit("#### ", 1)[1].strip()
    return None, question, gold, {"solution": answer}


def _parse_math500(row: Row) -> Parsed:
    problem, answer = _require(row, "problem", "answer")
    meta = {k: row[k] for k in ("solution", "subject", "level") if k in row}
    return row.get("unique_id"), problem, answer.strip(), meta


def _parse_omnimath(row: Row) -> Parsed:
    if "problem" in row:  # the original field names (Hugging Face KbsdJames/Omni-MATH)
        return _parse_omnimath_rule(row)
    question, answer = _require(row, "question", "answer")
    meta: dict[str, Any] = {}
    human_type = row.get("human_type")
    if isinstance(human_type, str) and human_type.startswith("omni_"):
        # omni_<difficulty>_<source>; source names contain underscores, so split twice only.
        _, difficulty, source = human_type.split("_", 2)
        meta = {"difficulty": float(difficulty), "source": source}
    return None, question, answer.strip(), meta


def _parse_omnimath_rule(row: Row) -> Parsed:
    problem, answer = _require(row, "problem", "answer")
    meta = {k: row[k] for k in ("domain", "difficulty", "source", "solution") if k in row}
    return None, problem, answer.strip(), meta


_PARSERS: dict[str, Callable[[Row], Parsed]] = {
    "gsm8k": _parse_gsm8k,
    "math500": _parse_math500,
    "omnimath": _parse_omnimath,
    "omnimath_rule": _parse_omnimath_rule,
}

# Where each benchmark's rows keep the question, for sources read without their answers (a
# budget pool: `load_problems(cfg, labelled=False)`). Omni-MATH files use either name.
_QUESTION_FIELDS: dict[str, tuple[str, ...]] = {
    "gsm8k": ("question",),
    "math500": ("problem",),
    "omnimath": ("problem", "question"),
    "omnimath_rule": ("problem",),
}


def _parse_question(name: str, row: Row) -> Parsed:
    """The question of a row, its answer not read (a pool of unlabelled questions has none)."""
    fields = _QUESTION_FIELDS[name]
    present = [key for key in fields if key in row]
    if not present:
        raise KeyError(f"missing field {' or '.join(map(repr, fields))}; present: {sorted(row)}")
    (question,) = _require(row, present[0])
    return row.get("unique_id") if name == "math500" else None, question, "", {}


# The file a folder source means, per benchmark (GSM8K and MATH pick by `file_split`: a copy of
# prm800k's math_splits/ holds train.jsonl beside MATH500's test.jsonl).
_DEFAULT_FILES: dict[str, Callable[[DatasetConfig], str]] = {
    "gsm8k": lambda cfg: f"{cfg.file_split}.jsonl",
    "math500": lambda cfg: f"{cfg.file_split}.jsonl",
    "omnimath": lambda cfg: "omni_test.json",
    "omnimath_rule": lambda cfg: "omni_math_rule.jsonl",
}


# --------------------------------------------------------------------------------------------
# Reading rows
# --------------------------------------------------------------------------------------------


def _read_rows(path: Path) -> Iterator[tuple[str, Row]]:
    """Yield (location, row) pairs from a JSONL file or a JSON array file."""
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON array of records")
        for position, row in enumerate(rows):
            if not isinstance(row, dict):
                raise DataError(f"{path}: record at array position {position} is not an object")
            yield f"{path} (array position {position})", row
        return
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_number}: not valid JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_number}: expected a JSON object per line")
            yield f"{path}:{line_number}", row


def _rows_from_hub(cfg: DatasetConfig) -> Iterator[tuple[str, Row]]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a base dependency
        raise DataError("loading from Hugging Face needs the `datasets` package") from exc
    try:
        table = datasets.load_dataset(cfg.hf_id, cfg.hf_config, split=cfg.hf_split)
    except Exception as exc:  # network, auth, unknown id: all mean "not reachable here"
        raise DataError(
            f"could not load Hugging Face dataset '{cfg.hf_id}' (split {cfg.hf_split}): {exc}; "
            "fix: set dataset.source (dataset.train_source for training problems) to a local copy"
        ) from exc
    for index, row in enumerate(table):
        yield f"hf:{cfg.hf_id}[{index}]", dict(row)


def _resolve_source(cfg: DatasetConfig) -> Path | None:
    if not cfg.source:
        return None
    path = Path(cfg.source)
    if path.is_dir():
        path = path / _DEFAULT_FILES[cfg.name](cfg)
    if path.is_file():
        return path
    if cfg.hf_id:
        log.info("local source %s not found; falling back to Hugging Face %s", path, cfg.hf_id)
        return None
    raise DataError(
        f"dataset file not found: {path}; fix: point dataset.source (dataset.train_source for "
        "training problems) at the benchmark file or folder"
    )


def _content_id(name: str, question: str) -> str:
    return f"{name}-{hashlib.sha1(question.encode('utf-8')).hexdigest()[:16]}"


def problems_from_rows(
    name: str, rows: Iterable[tuple[str, Row]], labelled: bool = True
) -> list[Problem]:
    """Parse rows into problems; malformed rows raise, empty gold answers are skipped and counted.
    `labelled=False` reads the questions only: every problem's `gold_answer` is ""."""
    parser = _PARSERS[name] if labelled else functools.partial(_parse_question, name)
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    skipped_empty = 0
    for location, row in rows:
        try:
            id_hint, question, gold, meta = parser(row)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{location}: malformed {name} record: {exc}") from None
        if labelled and not gold:
            skipped_empty += 1
            continue
        problem_id = id_hint or _content_id(name, question)
        # Identical questions get the same split anyway (splits hash the question, not the id);
        # suffix to keep ids unique.
        count = seen.get(problem_id, 0)
        seen[problem_id] = count + 1
        if count:
            problem_id = f"{problem_id}-{count + 1}"
        problems.append(Problem(problem_id, question, gold, {"benchmark": name, **meta}))
    if skipped_empty:
        log.warning("%s: skipped %d record(s) with an empty gold answer", name, skipped_empty)
    return problems


def load_problems(cfg: DatasetConfig, labelled: bool = True) -> list[Problem]:
    """All problems of the configured benchmark (before splitting; `limit` applies after).
    `labelled=False`: the questions alone, answers not read (`problems_from_rows`); the
    testbed's generated problems keep theirs."""
    if cfg.name == "testbed":
        from pipeline.testbed.tasks import generate_problems  # lazy: only testbed runs need it

        return generate_problems(cfg)
    path = _resolve_source(cfg)
    rows = _read_rows(path) if path is not None else _rows_from_hub(cfg)
    return problems_from_rows(cfg.name, rows, labelled)


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------

SplitBy = Literal["question", "id"]


def normalize_question(question: str) -> str:
    """What two problems must share to be the same question: whitespace runs collapsed to one
    space, ends stripped, case folded. Splits hash it, so a repeated question (also one copied
    with other spacing or case) cannot sit in train and in test at once."""
    return " ".join(question.split()).casefold()


def _unit_hash(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(key: str, fractions: SplitFractions, seed: int) -> str:
    """The split of one problem: a pure function of (key, seed, fractions)."""
    u = _unit_hash(key, seed)
    if u < fractions.train:
        return "train"
    if u < fractions.train + fractions.calibration:
        return "calibration"
    return "test"


def _split_key(problem: Problem, by: SplitBy) -> str:
    return normalize_question(problem.question) if by == "question" else problem.id


def split_problems(
    problems: Iterable[Problem], fractions: SplitFractions, seed: int, by: SplitBy = "question"
) -> dict[str, list[Problem]]:
    """One source split three ways by the hash of each problem's normalized question (`by="id"`:
    of its id, which keeps the testbed's historical assignment)."""
    splits: dict[str, list[Problem]] = {name: [] for name in SPLITS}
    for problem in problems:
        splits[assign_split(_split_key(problem, by), fractions, seed)].append(problem)
    return splits


@dataclass(frozen=True)
class DatasetSplits:
    """The configured dataset's three splits, where each comes from, and what the overlap guard
    removed (training-source problems whose normalized question the test source also holds)."""

    problems: dict[str, list[Problem]]
    origins: dict[str, str]  # split -> "<file or hf id>, <share>" for reports
    dropped_overlap: int = 0


def _source_label(cfg: DatasetConfig) -> str:
    if cfg.name == "testbed":
        return "generated (testbed)"
    path = _resolve_source(cfg)
    return str(path) if path is not None else f"hf:{cfg.hf_id} ({cfg.hf_split})"


def split_dataset(cfg: DatasetConfig) -> DatasetSplits:
    """The benchmark protocol of `cfg` (see the module docstring)."""
    problems = load_problems(cfg)
    main = _source_label(cfg)
    training_cfg = cfg.training_source()
    if training_cfg is None:
        # The testbed keeps its id-based assignment: its ids are positions of generation, it
        # has no repeated question, and the committed testbed policies and numbers were made on
        # that assignment; hashing questions would move problems between its splits.
        by: SplitBy = "id" if cfg.name == "testbed" else "question"
        splits = split_problems(problems, cfg.splits, cfg.seed, by)
        shares = cfg.splits.model_dump()
        origins = {s: f"{main}, {shares[s]:.0%} of {len(problems):,}" for s in SPLITS}
        return DatasetSplits(splits, origins)

    training = load_problems(training_cfg)
    in_test = {normalize_question(p.question) for p in problems}
    kept = [p for p in training if normalize_question(p.question) not in in_test]
    dropped = len(training) - len(kept)
    if dropped:
        log.warning(
            "%s: dropped %d training problem(s) whose question is also in the test source",
            cfg.name,
            dropped,
        )
    splits: dict[str, list[Problem]] = {"train": [], "calibration": [], "test": problems}
    for problem in kept:
        u = _unit_hash(normalize_question(problem.question), cfg.seed)
        splits["calibration" if u < cfg.calibration_fraction else "train"].append(problem)
    source = _source_label(training_cfg)
    share = cfg.calibration_fraction
    origins = {
        "train": f"{source}, {1 - share:.0%} of {len(kept):,}",
        "calibration": f"{source}, {share:.0%} of {len(kept):,}",
        "test": f"{main}, all {len(problems):,}",
    }
    return DatasetSplits(splits, origins, dropped)


def load_split(cfg: DatasetConfig, split: str) -> list[Problem]:
    """The problems of one split; with `cfg.limit`, a subset that is also order-independent."""
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; known: {', '.join(SPLITS)}")
    return _limited(split_dataset(cfg).problems[split], cfg)


def _limited(problems: list[Problem], cfg: DatasetConfig) -> list[Problem]:
    """With `cfg.limit`, that many of `problems`, chosen by hashed id (order-independent)."""
    if not cfg.limit:
        return problems
    return sorted(problems, key=lambda p: _unit_hash(p.id, cfg.seed + 1))[: cfg.limit]


def load_budget_pool(pool: DatasetConfig, dataset: DatasetConfig) -> list[Problem]:
    """The problems of a budget pool (`calibration.budget_pool`): every problem of `pool` whose
    question no split of `dataset` holds; with `pool.limit`, an order-independent subset. Only
    the questions are read (a cost needs no label), so a file of questions alone will do."""
    problems = load_problems(pool, labelled=False)
    held = [p for split in split_dataset(dataset).problems.values() for p in split]
    known = {normalize_question(p.question) for p in held}
    kept = [p for p in problems if normalize_question(p.question) not in known]
    if len(kept) < len(problems):
        log.warning(
            "budget pool: dropped %d problem(s) whose question a split of '%s' holds",
            len(problems) - len(kept),
            dataset.name,
        )
    clash = {p.id for p in kept} & {p.id for p in held}
    if clash:
        raise DataError(
            f"budget pool: {len(clash)} problem id(s) are also ids of '{dataset.name}' "
            f"problems with another question (e.g. {sorted(clash)[0]!r}); calibration rows are "
            "keyed by id: give the pool another source (the testbed: another seed)"
        )
    return _limited(kept, pool)
