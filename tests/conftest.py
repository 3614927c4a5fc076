"""Shared fixtures. The benchmark files live outside the repository (see README: Data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The benchmark data folder: $STEPROUTE_DATA_DIR, else ../shared/data beside the repo."""
    path = Path(os.environ.get("STEPROUTE_DATA_DIR", REPO.parent / "shared" / "data"))
    if not (path / "gsm8k" / "test.jsonl").is_file():
        pytest.fail(f"benchmark data not found under {path}; set STEPROUTE_DATA_DIR")
    return path


@pytest.fixture(autouse=True)
def _data_env(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The shipped configs read ${STEPROUTE_DATA_DIR:...}; point them at the same folder.
    monkeypatch.setenv("STEPROUTE_DATA_DIR", str(data_dir))
    # Configs name paths relative to the repository root (models, outputs).
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="session")
def testbed_cfg():
    from pipeline.config import load_config

    return load_config(REPO / "configs" / "testbed.yaml")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole session (more logical CPUs than cores: the engine
    actors mostly wait)."""
    import ray

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def testbed_engines(ray_session, testbed_cfg):
    """The testbed small and large models as shared `EngineActor`s (real vLLM on CPU)."""
    from pipeline.engines.launch import start_engines

    os.chdir(REPO)  # model paths in the config are relative to the repository
    engines = start_engines(testbed_cfg.models, use_ray=True)
    yield engines
    for engine in engines.values():
        ray_session.kill(engine.actor, no_restart=True)
