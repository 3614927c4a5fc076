"""`Problem`: one benchmark problem, the record every loader and generator produces.

It lives apart from `pipeline.data` so that generators the loaders call (the testbed's
`pipeline.testbed.tasks`) can build problems without importing the loaders back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Problem"]


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    gold_answer: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
