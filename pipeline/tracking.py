"""MLflow tracking: one helper that opens a run with the experiment config logged as params.

The tracking URI comes from the config (`tracking.mlflow_uri`, default a SQLite file in the
output folder: MLflow 3.17 refuses plain `file://` stores).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.config import ExperimentConfig

log = logging.getLogger(__name__)

__all__ = ["flatten", "mlflow_run"]

MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts/lists as flat `a.b.0.c` keys with string values (MLflow params)."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple) and any(isinstance(v, dict) for v in value):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix: str(value)[:MAX_PARAM_CHARS]}
    flat: dict[str, str] = {}
    for key, item in items:
        flat |= flatten(item, f"{prefix}.{key}" if prefix else str(key))
    return flat


@contextmanager
def mlflow_run(
    cfg: ExperimentConfig, run_name: str, tags: dict[str, str] | None = None
) -> Iterator[Any]:
    """An active MLflow run in the config's experiment, with the whole config as params."""
    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow_uri)
    mlflow.set_experiment(cfg.tracking.experiment)
    with mlflow.start_run(run_name=run_name, tags={"config": cfg.name, **(tags or {})}) as run:
        mlflow.log_params(flatten(cfg.model_dump(mode="json")))
        log.info("mlflow run %s in %s", run.info.run_id, cfg.mlflow_uri)
        yield run
