"""docs/ARCHITECTURE.md matches the code: every interface it names imports, and lists exactly
the fields of a record (dataclass or pydantic model) or existing members of a class."""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

import pytest
from importlinter.application.use_cases import read_user_options
from importlinter.configuration import configure
from pydantic import BaseModel

DOC = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"
ROW = re.compile(r"^\| `([\w.]+)` \| (`.+`) \|$")


def _interfaces() -> list[tuple[str, list[str]]]:
    text = DOC.read_text()
    section = text.split("## Interfaces", 1)[1].split("\n## ", 1)[0]
    rows = [ROW.match(line) for line in section.splitlines()]
    return [(m.group(1), re.findall(r"`(\w+)`", m.group(2))) for m in rows if m]


def _load(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_the_document_names_the_interfaces() -> None:
    names = [name for name, _ in _interfaces()]
    assert len(names) >= 10
    assert "pipeline.features.Observation" in names and "pipeline.rules.RoutingRule" in names


@pytest.mark.parametrize("dotted, listed", _interfaces(), ids=lambda v: str(v))
def test_each_interface_has_the_listed_fields(dotted, listed) -> None:
    cls = _load(dotted)
    if dataclasses.is_dataclass(cls):
        public = [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
        assert listed == public, f"{dotted}: the document lists {listed}, the code has {public}"
    elif (
        isinstance(cls, type)
        and issubclass(cls, BaseModel)
        and dotted.startswith("pipeline.config")
    ):
        assert listed == list(cls.model_fields), dotted  # a config schema: every section
    elif isinstance(cls, type) and issubclass(cls, BaseModel):
        missing = [m for m in listed if m not in cls.model_fields and not hasattr(cls, m)]
        assert not missing, f"{dotted} has no {missing}"
    else:
        annotated = set(getattr(cls, "__annotations__", {}))
        missing = [m for m in listed if not hasattr(cls, m) and m not in annotated]
        assert not missing, f"{dotted} has no {missing}"


def _layer_rows() -> list[list[str]]:
    text = DOC.read_text().split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[2] for line in text.splitlines() if line.startswith("| ")][2:]
    return [re.findall(r"`([\w.]+)`", row) for row in rows]


def test_the_layers_table_is_the_import_contract() -> None:
    configure()  # import-linter's own reader of the contracts in pyproject.toml
    options = read_user_options(str(DOC.parents[1] / "pyproject.toml"))
    (layers,) = [c["layers"] for c in options.contracts_options if c["id"] == "layers"]
    assert _layer_rows() == [[m.strip() for m in layer.split("|")] for layer in layers]
    for row in _layer_rows():
        for module in row:
            importlib.import_module(module)
