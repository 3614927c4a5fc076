"""Parsing the option values several commands share: `--seeds 0,1,2` and `--set key=value`."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli.console import fail
from pipeline.config import ConfigError

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override a config key: section.key=value (YAML value); repeatable."
    ),
]
"""`--set`, as every command that loads an experiment config takes it (`parse_overrides`)."""


def parse_seeds(text: str | None) -> list[int]:
    """`--seeds 0,1,2` → [0, 1, 2]; a clear error for anything else."""
    if text is None:
        return []
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(
            f"--seeds '{text}': expected comma-separated integers, e.g. 0,1,2"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds '{text}': expected distinct comma-separated integers")
    return seeds


def parse_overrides(pairs: list[str] | None, tree: dict | None = None) -> dict:
    """`["evaluation.limit=400"]` → `{"evaluation": {"limit": 400}}` (values parsed as YAML),
    added to `tree` (a command's own option overrides), where `--set` wins."""
    import yaml

    tree = tree or {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise fail(f"--set takes section.key=value (got {pair!r})")
        *parents, leaf = key.strip().split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return tree
