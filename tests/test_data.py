from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import ConfigError, DatasetConfig, SplitFractions, load_config
from pipeline.data import (
    SPLITS,
    DataError,
    Problem,
    assign_split,
    load_budget_pool,
    load_problems,
    load_split,
    normalize_question,
    problems_from_rows,
    split_dataset,
    split_problems,
)

REPO = Path(__file__).resolve().parents[1]

# Record counts from the data folder's README.
EXPECTED = {
    ("gsm8k", "test"): 1319,
    ("gsm8k", "train"): 7473,
    ("math500", "test"): 500,
    ("omnimath_rule", "test"): 2821,
}
OMNI_RECORDS, OMNI_EMPTY_GOLD = 4428, 9


@pytest.mark.parametrize(("name", "file_split"), sorted(EXPECTED))
def test_loader_row_counts_match_data_readme(data_dir: Path, name: str, file_split: str) -> None:
    folder = "omnimath" if name.startswith("omnimath") else name
    cfg = DatasetConfig(name=name, source=str(data_dir / folder), file_split=file_split)
    problems = load_problems(cfg)
    assert len(problems) == EXPECTED[(name, file_split)]
    assert len({p.id for p in problems}) == len(problems)
    assert all(p.question and p.gold_answer for p in problems)


def test_omnimath_skips_empty_gold_answers_and_counts_them(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = DatasetConfig(name="omnimath", source=str(data_dir / "omnimath"))
    with caplog.at_level(logging.WARNING):
        problems = load_problems(cfg)
    assert len(problems) == OMNI_RECORDS - OMNI_EMPTY_GOLD
    assert f"skipped {OMNI_EMPTY_GOLD} record(s) with an empty gold answer" in caplog.text
    # human_type = omni_<difficulty>_<source>, source names keep their underscores
    assert any(p.meta.get("source") == "china_team_selection_test" for p in problems)


def test_gsm8k_gold_is_the_text_after_the_marker(data_dir: Path) -> None:
    cfg = DatasetConfig(name="gsm8k", source=str(data_dir / "gsm8k"))
    first = load_problems(cfg)[0]
    line = json.loads((data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()[0])
    assert first.gold_answer == line["answer"].split("#### ")[-1].strip()


def test_malformed_row_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "test.jsonl"
    good = json.dumps({"question": "q", "answer": "a\n#### 3"})
    path.write_text(good + "\n" + json.dumps({"question": "q2"}) + "\n")
    with pytest.raises(DataError, match=rf"{path}:2: malformed gsm8k record"):
        load_problems(DatasetConfig(name="gsm8k", source=str(path)))


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "test.jsonl"
    path.write_text('{"question": "q", "answer": "#### 1"}\n{not json\n')
    with pytest.raises(DataError, match=rf"{path}:2: not valid JSON"):
        load_problems(DatasetConfig(name="gsm8k", source=str(path)))


def test_missing_source_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset file not found"):
        load_problems(DatasetConfig(name="math500", source=str(tmp_path / "nowhere")))


def _problems(ids: list[str]) -> list[Problem]:
    return [Problem(i, f"question {i}", "1") for i in ids]


@settings(max_examples=60, deadline=None)
@given(
    ids=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=60, unique=True),
    seed=st.integers(0, 2**31),
    shuffle_seed=st.integers(0, 1000),
)
def test_split_is_deterministic_disjoint_and_order_independent(
    ids: list[str], seed: int, shuffle_seed: int
) -> None:
    fractions = SplitFractions(train=0.5, calibration=0.25, test=0.25)
    first = split_problems(_problems(ids), fractions, seed)
    shuffled = ids[:]
    random.Random(shuffle_seed).shuffle(shuffled)
    second = split_problems(_problems(shuffled), fractions, seed)
    for name in SPLITS:
        assert {p.id for p in first[name]} == {p.id for p in second[name]}
    seen = [p.id for name in SPLITS for p in first[name]]
    assert sorted(seen) == sorted(ids)  # every problem in exactly one split


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_split_fractions_are_respected_on_a_large_set(seed: int) -> None:
    fractions = SplitFractions(train=0.6, calibration=0.2, test=0.2)
    counts = {name: 0 for name in SPLITS}
    for i in range(3000):
        counts[assign_split(f"p{i}", fractions, seed)] += 1
    assert abs(counts["train"] / 3000 - 0.6) < 0.05
    assert abs(counts["test"] / 3000 - 0.2) < 0.05


def test_load_split_limit_is_order_independent(data_dir: Path) -> None:
    cfg = DatasetConfig(name="math500", source=str(data_dir / "math500"), limit=20)
    ids = [p.id for p in load_split(cfg, "test")]
    assert len(ids) == 20
    rows = (data_dir / "math500" / "test.jsonl").read_text().splitlines()
    reversed_rows = [(f"r{i}", json.loads(r)) for i, r in enumerate(reversed(rows))]
    reordered = split_problems(problems_from_rows("math500", reversed_rows), cfg.splits, cfg.seed)
    assert set(ids) <= {p.id for p in reordered["test"]}


def test_unknown_split_is_rejected(data_dir: Path) -> None:
    cfg = DatasetConfig(name="math500", source=str(data_dir / "math500"))
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_split(cfg, "dev")


# --------------------------------------------------------------------------------------------
# The testbed keeps its id-based split
# --------------------------------------------------------------------------------------------

# sha256 of the sorted ids of each split of configs/testbed.yaml, recorded from the id-hashing
# split before splits moved to questions: trained testbed policies and the README's numbers
# were made on exactly these problems.
TESTBED_SPLITS = {
    "train": (3240, "d9e004150f739bd066f81f6e40feac297044750b2bd79f90021bf3f5c7bfa51c"),
    "calibration": (1040, "7bc1c216c5584b3f9bb42e3fedb5ef75af56a9f8cef144ba066e7c3b42485f6e"),
    "test": (1020, "22bf61036e11da23d413ba2854bf5ab3cda5d5a06641f1d58d4b4bce1174768e"),
}


def test_testbed_split_assignment_is_unchanged() -> None:
    splits = split_dataset(load_config(REPO / "configs" / "testbed.yaml").dataset).problems
    for name, (count, digest) in TESTBED_SPLITS.items():
        ids = sorted(p.id for p in splits[name])
        assert len(ids) == count, name
        assert hashlib.sha256("\n".join(ids).encode()).hexdigest() == digest, name


# --------------------------------------------------------------------------------------------
# The standard protocol: a training source for train / calibration, all of test
# --------------------------------------------------------------------------------------------


def test_gsm8k_config_trains_on_train_and_tests_on_all_of_test(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load_config(REPO / "configs" / "gsm8k_qwen25math.yaml").dataset
    with caplog.at_level(logging.WARNING):
        result = split_dataset(cfg)
    splits = result.problems
    test_file = DatasetConfig(name="gsm8k", source=str(data_dir / "gsm8k"), file_split="test")
    assert {p.id for p in splits["test"]} == {p.id for p in load_problems(test_file)}
    assert len(splits["test"]) == 1319
    # GSM8K's train and test share no question, so nothing is dropped: 7,473 = train + calibration.
    assert result.dropped_overlap == 0 and "dropped" not in caplog.text
    assert len(splits["train"]) + len(splits["calibration"]) == 7473
    assert abs(len(splits["calibration"]) / 7473 - cfg.calibration_fraction) < 0.02
    assert not {p.id for p in splits["train"]} & {p.id for p in splits["calibration"]}
    assert all(p.meta["benchmark"] == "gsm8k" for p in splits["train"])
    assert "train.jsonl" in result.origins["train"] and "test.jsonl" in result.origins["test"]


def _write_gsm8k(path: Path, questions: list[str]) -> Path:
    rows = [{"question": q, "answer": f"work\n#### {i}"} for i, q in enumerate(questions)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_training_question_also_in_test_is_dropped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    test = _write_gsm8k(tmp_path / "test.jsonl", ["How many apples?", "What is 2+2?"])
    train_questions = ["  how many   APPLES?\n", "What is 3+3?", "What is 4+4?", "What is 2+2?"]
    train = _write_gsm8k(tmp_path / "train.jsonl", train_questions)
    cfg = DatasetConfig(name="gsm8k", source=str(test), train_source=str(train))
    with caplog.at_level(logging.WARNING):
        result = split_dataset(cfg)
    assert result.dropped_overlap == 2
    assert "dropped 2 training problem(s)" in caplog.text
    used = [p.question for split in ("train", "calibration") for p in result.problems[split]]
    assert sorted(used) == ["What is 3+3?", "What is 4+4?"]
    assert len(result.problems["test"]) == 2


def test_another_benchmark_can_be_the_training_source(data_dir: Path) -> None:
    cfg = DatasetConfig(
        name="math500",
        source=str(data_dir / "math500"),
        train_source=str(data_dir / "gsm8k"),
        train_name="gsm8k",
    )
    splits = split_dataset(cfg).problems
    assert len(splits["test"]) == 500
    assert len(splits["train"]) + len(splits["calibration"]) == 7473
    assert {p.meta["benchmark"] for p in splits["calibration"]} == {"gsm8k"}


def test_a_math_train_folder_is_read_by_train_file_split(data_dir: Path, tmp_path: Path) -> None:
    """A copy of prm800k's math_splits/ holds train.jsonl in MATH500's own format."""
    rows = [
        {"problem": f"Compute {i}+{i}.", "answer": str(2 * i), "unique_id": f"train/a/{i}.json"}
        for i in range(40)
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DatasetConfig(
        name="math500", source=str(data_dir / "math500"), train_source=str(tmp_path)
    )
    result = split_dataset(cfg)
    assert len(result.problems["train"]) + len(result.problems["calibration"]) == 40
    assert len(result.problems["test"]) == 500
    assert str(tmp_path / "train.jsonl") in result.origins["calibration"]


def test_a_missing_training_source_names_the_file(data_dir: Path, tmp_path: Path) -> None:
    cfg = DatasetConfig(
        name="gsm8k", source=str(data_dir / "gsm8k"), train_source=str(tmp_path / "nowhere")
    )
    with pytest.raises(DataError, match=rf"dataset file not found: {tmp_path / 'nowhere'}"):
        load_split(cfg, "train")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"train_source": "x", "splits": {"train": 0.5, "calibration": 0.25, "test": 0.25}},
            "remove `splits`",
        ),
        ({"calibration_fraction": 0.3}, "only with a training source: calibration_fraction"),
        ({"train_name": "gsm8k"}, "only with a training source: train_name"),
        ({"train_source": "x", "train_name": "testbed"}, "the testbed cannot be a training"),
        ({"train_source": "x", "calibration_fraction": 1.0}, "calibration_fraction"),
    ],
)
def test_a_config_mixing_the_protocols_is_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DatasetConfig(name="gsm8k", source="gsm8k", **fields)


def test_the_testbed_takes_no_training_source() -> None:
    with pytest.raises(ValueError, match="the testbed generates its problems"):
        DatasetConfig(name="testbed", train_source="x")


def test_a_shipped_config_with_splits_and_a_training_source_fails_at_load(tmp_path: Path) -> None:
    text = (REPO / "configs" / "gsm8k_qwen25math.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        text.replace(
            "  seed: 0\n", "  seed: 0\n  splits: {train: 0.8, calibration: 0.1, test: 0.1}\n", 1
        )
    )
    with pytest.raises(ConfigError, match="remove `splits`"):
        load_config(bad)


@pytest.mark.parametrize("config", ["gsm8k_qwen25math.yaml", "testbed.yaml"])
def test_a_dumped_dataset_config_loads_back(config: str) -> None:
    """Configs are saved beside every artifact with every field written out; the protocol
    checks must accept them back."""
    dataset = load_config(REPO / "configs" / config).dataset
    assert DatasetConfig(**dataset.model_dump(mode="json")) == dataset


# --------------------------------------------------------------------------------------------
# Repeated questions sit in one split
# --------------------------------------------------------------------------------------------

_WORD = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=6)
_SPACE = st.sampled_from([" ", "  ", "\t", "\n", " \n\t "])


@st.composite
def _respelled(draw: st.DrawFn, words: list[str]) -> str:
    """The same question with other whitespace and letter case."""
    cased = [draw(st.sampled_from([w, w.upper(), w.lower(), w.swapcase()])) for w in words]
    text = "".join(w + draw(_SPACE) for w in cased[:-1]) + cased[-1]
    return draw(st.sampled_from(["", " ", "\n"])) + text + draw(st.sampled_from(["", " ", "\n"]))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**31))
def test_respelled_duplicates_always_share_a_split(data: st.DataObject, seed: int) -> None:
    questions = data.draw(st.lists(st.lists(_WORD, min_size=1, max_size=8), min_size=1, max_size=8))
    problems = []
    for index, words in enumerate(questions):
        copies = data.draw(st.integers(2, 4))
        for copy in range(copies):
            text = data.draw(_respelled(words))
            problems.append(Problem(f"q{index}-{copy}", text, "1", {"base": index}))
    fractions = SplitFractions(train=0.4, calibration=0.3, test=0.3)
    splits = split_problems(problems, fractions, seed)
    homes: dict[str, set[str]] = defaultdict(set)
    for name, members in splits.items():
        for problem in members:
            homes[normalize_question(problem.question)].add(name)
    assert all(len(names) == 1 for names in homes.values())


@pytest.mark.parametrize(("name", "repeated"), [("omnimath", 22), ("omnimath_rule", 5)])
def test_omnimath_repeated_questions_share_a_split(
    data_dir: Path, name: str, repeated: int
) -> None:
    cfg = DatasetConfig(name=name, source=str(data_dir / "omnimath"))
    problems = load_problems(cfg)
    groups: dict[str, list[str]] = defaultdict(list)
    for problem in problems:
        groups[normalize_question(problem.question)].append(problem.id)
    repeats = [ids for ids in groups.values() if len(ids) > 1]
    assert len(repeats) == repeated  # the data folder's duplicates, each with a "-2" id
    for splits in (split_dataset(cfg).problems, split_problems(problems, cfg.splits, cfg.seed)):
        home = {p.id: split for split, members in splits.items() for p in members}
        assert all(len({home[i] for i in ids}) == 1 for ids in repeats)
    # Hashing ids, as the splits once did, puts some of them on both sides.
    by_id = split_problems(problems, cfg.splits, cfg.seed, by="id")
    home = {p.id: split for split, members in by_id.items() for p in members}
    assert any(len({home[i] for i in ids}) > 1 for ids in repeats)


# --------------------------------------------------------------------------------------------
# A budget pool: more problems for the cost tests, none that a split holds
# --------------------------------------------------------------------------------------------


def test_a_testbed_budget_pool_is_fresh_problems_none_of_them_in_a_split() -> None:
    cfg = load_config(REPO / "configs" / "testbed.yaml")
    pool = load_budget_pool(cfg.calibration.budget_pool, cfg.dataset)
    assert len(pool) == cfg.calibration.budget_pool.testbed["num_problems"]
    splits = split_dataset(cfg.dataset).problems.values()
    held = {p.question for split in splits for p in split}
    assert not {p.question for p in pool} & held
    assert not {p.id for p in pool} & {p.id for split in splits for p in split}


def test_a_budget_pool_reads_questions_alone(tmp_path: Path) -> None:
    """A cost needs no label: a pool may be questions without answers. The same file is
    refused as labelled problems, and a record without the question names its line."""
    main = _write_gsm8k(tmp_path / "main.jsonl", ["What is 2+2?", "What is 3+3?"])
    dataset = DatasetConfig(name="gsm8k", source=str(main))
    rows = [{"question": "Is 5 > 4?"}, {"question": "Is 6 > 4?", "answer": "yes\n#### 1"}]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    pool_cfg = DatasetConfig(name="gsm8k", source=str(questions))
    pool = load_budget_pool(pool_cfg, dataset)
    assert sorted(p.question for p in pool) == ["Is 5 > 4?", "Is 6 > 4?"]
    assert {p.gold_answer for p in pool} == {""}  # answers are not read, even where present
    (labelled,) = problems_from_rows("gsm8k", [("row", rows[1])])
    assert labelled.id in {p.id for p in pool}  # the benchmark's own id for that question
    with pytest.raises(DataError, match="questions.jsonl:1: .*'answer'"):
        load_problems(pool_cfg)
    math_pool = tmp_path / "math.jsonl"
    math_pool.write_text(json.dumps({"problem": "Find x.", "unique_id": "test/x.json"}) + "\n")
    (problem,) = load_budget_pool(DatasetConfig(name="math500", source=str(math_pool)), dataset)
    assert (problem.id, problem.question, problem.gold_answer) == ("test/x.json", "Find x.", "")
    questions.write_text(json.dumps({"query": "Is 7 > 4?"}) + "\n")
    with pytest.raises(DataError, match="questions.jsonl:1: .*missing field 'question'"):
        load_budget_pool(pool_cfg, dataset)


def test_a_budget_pool_drops_questions_a_split_holds_and_refuses_shared_ids(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    main = _write_gsm8k(tmp_path / "main.jsonl", ["What is 2+2?", "What is 3+3?", "What is 4+4?"])
    dataset = DatasetConfig(name="gsm8k", source=str(main))
    extra = _write_gsm8k(tmp_path / "pool.jsonl", ["  what is 3+3?", "Is 5 > 4?", "Is 6 > 4?"])
    pool_cfg = DatasetConfig(name="gsm8k", source=str(extra))
    with caplog.at_level(logging.WARNING):
        pool = load_budget_pool(pool_cfg, dataset)
    assert sorted(p.question for p in pool) == ["Is 5 > 4?", "Is 6 > 4?"]
    assert "dropped 1 problem(s)" in caplog.text
    assert len(load_budget_pool(pool_cfg.model_copy(update={"limit": 1}), dataset)) == 1
    # Rows are keyed by id: a pool whose ids name other problems of the benchmark is refused
    # (testbed ids are seed and position: the same seed with other knobs, other questions).
    testbed = DatasetConfig(name="testbed", testbed={"num_problems": 50, "seed": 7})
    shorter = testbed.model_copy(
        update={"testbed": {**testbed.testbed, "max_ops": 2, "min_ops": 1}}
    )
    with pytest.raises(DataError, match="problem id"):
        load_budget_pool(shorter, testbed)
