from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import DatasetConfig, SplitFractions
from pipeline.data import (
    SPLITS,
    DataError,
    Problem,
    assign_split,
    load_problems,
    load_split,
    problems_from_rows,
    split_problems,
)

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
