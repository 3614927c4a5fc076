"""The router app's replicas carry Serve's request-path settings (serve_app/request_path.py)."""

from __future__ import annotations

from pathlib import Path

from serve_app.app import build_app
from serve_app.request_path import REQUEST_PATH_ENV

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "testbed.yaml")
ARGS = {"config": CONFIG, "overrides": {"serve": {"policy": "hand_set", "auth": {"mode": "off"}}}}


def _deployments(application) -> dict:
    """Name -> Deployment of the router and the engine deployments bound into it."""
    router = application._bound_deployment
    engines = router.init_kwargs["engines"]
    return {router.name: router} | {
        bound._bound_deployment.name: bound._bound_deployment for bound in engines.values()
    }


def test_every_replica_gets_the_request_path_settings() -> None:
    deployments = _deployments(build_app(ARGS))
    assert set(deployments) == {"Router", "engine-small", "engine-large"}
    for name, deployment in deployments.items():
        env = deployment.ray_actor_options["runtime_env"]["env_vars"]
        assert env == REQUEST_PATH_ENV, name


def test_a_setting_in_the_environment_wins(monkeypatch) -> None:
    monkeypatch.setenv("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "1")
    for deployment in _deployments(build_app(ARGS)).values():
        env = deployment.ray_actor_options["runtime_env"]["env_vars"]
        assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "1"
        assert env["RAY_SERVE_USE_GRPC_BY_DEFAULT"] == "1"
