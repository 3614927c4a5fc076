"""The Serve application: engine deployments (one per model) bound into the `Router` ingress.

`build_app` is the application builder that `serve run serve_app/config.yaml`, `serve deploy`
and `steproute serve` all call, with the args of the Serve config file:

    config:      the experiment YAML (models, routing, the `serve` section)
    overrides:   optional nested keys merged over it, e.g. {serve: {auth: {mode: "on"}}}
    engines_app: optional name of another application whose engine deployments this router
                 shares instead of starting its own (several routers, one engine pool)

Everything that can be wrong with the config, the policy or the keys fails here, before any
replica starts.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import asdict
from pathlib import Path

from pipeline.calibration import load_operating_points
from pipeline.config import ConfigError, ExperimentConfig, PRMConfig, load_config
from pipeline.policy import HAND_SET
from serve_app.engines import EngineServer
from serve_app.request_path import request_path_env
from serve_app.router import Router

__all__ = ["api_keys", "auth_required", "build_app", "policy_dir", "served_points"]

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def _actor_options(**options) -> dict:
    """`ray_actor_options` for one of this app's replicas, with the request-path settings."""
    return options | {"runtime_env": {"env_vars": request_path_env()}}


def auth_required(cfg: ExperimentConfig) -> bool:
    mode = cfg.serve.auth.mode
    if mode != "auto":
        return mode == "on"
    host = cfg.serve.host
    if host in LOOPBACK_NAMES:
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it is reachable from elsewhere
        return True


def api_keys(cfg: ExperimentConfig) -> list[str]:
    """The keys that unlock the endpoint ([] = auth off). Auth on with no key is an error."""
    if not auth_required(cfg):
        return []
    auth = cfg.serve.auth
    keys = [k.strip() for k in os.environ.get(auth.api_keys_env, "").split(",") if k.strip()]
    keys += list(auth.api_keys)
    if not keys:
        raise ConfigError(
            f"serve: API-key auth is on (mode '{auth.mode}', host '{cfg.serve.host}') but no key "
            f"is set; fix: export {auth.api_keys_env}=key1,key2 or set serve.auth.mode: off "
            "(only on a trusted network)"
        )
    return keys


def served_points(cfg: ExperimentConfig) -> tuple[str | None, list[dict]]:
    """What the router routes with: (the policy folder or `HAND_SET`, its calibrated points)
    for `routing.rule: policy`; (None, the rule's points from `steproute calibrate --rule`) for
    a baseline such as prm_threshold."""
    rule = cfg.routing.rule
    if rule == "policy":
        folder = policy_dir(cfg)
        return folder, [] if folder == HAND_SET else [
            asdict(p) for p in load_operating_points(folder)
        ]
    folder = cfg.rule_dir(rule)
    points = load_operating_points(folder)
    if not points:
        raise ConfigError(
            f"serve: routing.rule is '{rule}' but {folder} has no operating_points.json; fix: run "
            f"`steproute calibrate --rule {rule}` first"
        )
    return None, [asdict(p) for p in points]


def policy_dir(cfg: ExperimentConfig) -> str:
    """The trained policy folder (with operating_points.json), or `HAND_SET`; the router loads
    it with `pipeline.policy.load_policy`."""
    chosen = cfg.serve.policy or str(Path(cfg.output_dir) / "policy")
    if chosen == HAND_SET:
        return chosen
    folder = Path(chosen).resolve()
    if not (folder / "policy.json").exists():
        raise ConfigError(
            f"serve: no trained policy at {folder}; fix: run `steproute train` and "
            "`steproute calibrate` first, set serve.policy to a policy folder, or set "
            f"serve.policy: {HAND_SET} to serve the hand-set linear policy"
        )
    if not load_operating_points(folder):
        raise ConfigError(
            f"serve: {folder} has no operating_points.json; fix: run `steproute calibrate`"
        )
    return str(folder)


def _engine_deployment(model, cfg: ExperimentConfig):
    """One model's `EngineServer` deployment, `engine-<name>` (the PRM's too)."""
    resources = model.resources
    options = _actor_options(
        num_cpus=resources.num_cpus,
        num_gpus=resources.num_gpus,
        resources=dict(resources.custom_resources),
    )
    return EngineServer.options(
        name=f"engine-{model.name}",
        num_replicas=cfg.serve.engine_replicas,
        ray_actor_options=options,
    ).bind(model.model_dump(mode="json"), prm=isinstance(model, PRMConfig))


def build_app(args: dict):
    if "config" not in args:
        raise ConfigError("serve_app: the application args need 'config: <experiment YAML>'")
    cfg = load_config(args["config"], args.get("overrides")).with_absolute_paths()
    folder, points = served_points(cfg)
    keys = api_keys(cfg)
    engines_app = args.get("engines_app")
    served = cfg.models_for([cfg.routing.rule])  # the PRM, too, when the rule scores with it
    engines = None if engines_app else {m.name: _engine_deployment(m, cfg) for m in served}
    serve_cfg = cfg.serve
    router_options: dict = {
        # Requests past our own limit must reach the router to get a 429, not wait in a queue.
        "max_ongoing_requests": serve_cfg.max_ongoing_requests * 2 + 8,
        "ray_actor_options": _actor_options(num_cpus=serve_cfg.router_num_cpus),
    }
    if serve_cfg.autoscaling:
        router_options["autoscaling_config"] = serve_cfg.autoscaling
    else:
        router_options["num_replicas"] = serve_cfg.router_replicas
    return Router.options(**router_options).bind(
        cfg.model_dump(mode="json"),
        folder,
        points,
        keys,
        engines=engines,
        engines_app=engines_app,
    )
