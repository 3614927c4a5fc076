"""The import contracts of pyproject.toml hold on the code, and each one catches a violation.

`make test` runs `lint-imports` on the same contracts; these tests build the same import graph
with grimp, check the contracts through import-linter's own classes, then add one import that
breaks each contract to show that the check can fail.
"""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest
from importlinter.application.use_cases import read_user_options
from importlinter.configuration import configure
from importlinter.contracts.acyclic_siblings import AcyclicSiblingsContract
from importlinter.contracts.layers import LayersContract

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
KINDS = {"layers": LayersContract, "acyclic_siblings": AcyclicSiblingsContract}


@pytest.fixture(scope="module")
def options():
    configure()  # what the `lint-imports` command does first: its file readers
    return read_user_options(str(PYPROJECT))


@pytest.fixture()
def graph(options):
    return grimp.build_graph(*options.session_options["root_packages"])


def _contract(options, contract_id: str):
    (raw,) = [c for c in options.contracts_options if c.get("id") == contract_id]
    return KINDS[raw["type"]](raw["name"], options.session_options, raw)


def _kept(options, contract_id: str, graph) -> bool:
    return _contract(options, contract_id).check(graph, verbose=False).kept


def _add(graph, importer: str, imported: str) -> None:
    graph.add_import(
        importer=importer, imported=imported, line_number=1, line_contents=f"import {imported}"
    )


@pytest.mark.parametrize("contract_id", ["layers", "no-cycles"])
def test_the_code_keeps_every_contract(options, graph, contract_id) -> None:
    assert _kept(options, contract_id, graph)


@pytest.mark.parametrize(
    "importer, imported",
    [
        ("pipeline.config", "pipeline.controller"),  # config/data reaching up to the controller
        ("pipeline.rules", "pipeline.controller"),  # the rules above the controller that calls them
        ("pipeline.controller", "pipeline.evaluation"),  # the controller reaching a harness
        ("pipeline.evaluation", "rllib_env.env"),  # two harnesses of one layer
    ],
)
def test_an_import_against_the_layers_breaks_the_layers_contract(
    options, graph, importer, imported
) -> None:
    _add(graph, importer, imported)
    assert not _kept(options, "layers", graph)


@pytest.mark.parametrize(
    "importer, imported",
    [
        ("pipeline.engines.types", "pipeline.engines.launch"),  # inside a subpackage
        ("pipeline.testbed.tasks", "pipeline.data"),  # the cycle Problem's own module removed
        ("pipeline.calibration", "pipeline.evaluation"),  # statistics importing their runner
    ],
)
def test_an_import_cycle_breaks_the_no_cycles_contract(options, graph, importer, imported) -> None:
    _add(graph, importer, imported)
    assert not _kept(options, "no-cycles", graph)
