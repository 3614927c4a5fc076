from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, interpolate_env, load_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _minimal() -> dict:
    return {
        "name": "t",
        "models": [
            {"name": "small", "path": "s", "cost": {"parameters": 1e6}},
            {"name": "large", "path": "l", "cost": {"parameters": 8e6}},
        ],
        "dataset": {"name": "gsm8k", "source": "data/gsm8k"},
    }


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert len(cfg.models) >= 2
    assert cfg.mlflow_uri.startswith("sqlite:///")


def test_unknown_key_is_named_with_file_and_fix(tmp_path: Path) -> None:
    data = _minimal()
    data["models"][0]["sampling"] = {"temprature": 0.5}
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "unknown key 'models.0.sampling.temprature'" in message
    assert str(path) in message
    assert "fix:" in message


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    data = _minimal()
    data["routing"] = {"max_steps": "many"}
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, data))
    assert "routing.max_steps" in str(err.value)
    assert "'many'" in str(err.value)


def test_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_missing_required_key(tmp_path: Path) -> None:
    data = _minimal()
    del data["dataset"]
    with pytest.raises(ConfigError, match="missing required key 'dataset'"):
        load_config(_write(tmp_path, data))


def test_flops_cost_model_needs_parameter_counts(tmp_path: Path) -> None:
    data = _minimal()
    del data["models"][1]["cost"]
    with pytest.raises(ConfigError, match="needs cost.parameters"):
        load_config(_write(tmp_path, data))


def test_split_fractions_must_sum_to_one(tmp_path: Path) -> None:
    data = _minimal()
    data["dataset"]["splits"] = {"train": 0.5, "calibration": 0.2, "test": 0.2}
    with pytest.raises(ConfigError, match="sum to 1"):
        load_config(_write(tmp_path, data))


def test_env_interpolation_uses_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEPROUTE_T_VAR", raising=False)
    assert interpolate_env({"a": "${STEPROUTE_T_VAR:x}/y"}) == {"a": "x/y"}
    monkeypatch.setenv("STEPROUTE_T_VAR", "z")
    assert interpolate_env({"a": ["${STEPROUTE_T_VAR:x}/y", 3]}) == {"a": ["z/y", 3]}


def test_env_without_default_must_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEPROUTE_T_UNSET", raising=False)
    with pytest.raises(ConfigError, match="STEPROUTE_T_UNSET is not set"):
        interpolate_env({"a": "${STEPROUTE_T_UNSET}"})


def test_configs_are_frozen() -> None:
    cfg = load_config(REPO / "configs" / "testbed.yaml")
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError on frozen
        cfg.routing.max_steps = 3  # type: ignore[misc]


def test_the_oracle_rule_is_refused_outside_the_testbed(tmp_path: Path) -> None:
    data = _minimal()
    data["evaluation"] = {"rules": ["small_only", "large_only", "oracle"]}
    with pytest.raises(ConfigError, match="'oracle' grades each draft with the testbed"):
        load_config(_write(tmp_path, data))


def test_a_prm_behind_an_openai_api_is_refused_with_the_reason(tmp_path: Path) -> None:
    data = _minimal()
    data["prm"] = {
        "path": "Qwen/Qwen2.5-Math-PRM-7B",
        "engine": "openai",
        "api_base": "http://127.0.0.1:9/v1",
        "step_tag_id": 151651,
        "cost": {"parameters": 7e9},
    }
    with pytest.raises(ConfigError, match="pooling"):
        load_config(_write(tmp_path, data))


def test_the_prm_needs_the_cost_models_inputs_and_a_name_of_its_own(tmp_path: Path) -> None:
    data = _minimal()
    data["prm"] = {"path": "p", "step_tag_id": 7}
    with pytest.raises(ConfigError, match="prm.*cost.parameters"):
        load_config(_write(tmp_path, data))
    data["prm"] |= {"name": "large", "cost": {"parameters": 1e6}}
    with pytest.raises(ConfigError, match="also a model of the ladder"):
        load_config(_write(tmp_path, data))
    data["prm"]["name"] = "prm"
    cfg = load_config(_write(tmp_path, data))
    assert [m.name for m in cfg.engine_models] == ["small", "large", "prm"]


def test_routing_rule_is_a_calibrated_rule_and_prm_threshold_needs_a_prm(testbed_cfg) -> None:
    from pydantic import ValidationError

    from pipeline.config import CALIBRATED_RULES, ExperimentConfig
    from pipeline.rules import RULES, ThresholdRule

    assert all(issubclass(RULES[name], ThresholdRule) for name in CALIBRATED_RULES)
    data = testbed_cfg.model_dump(mode="json")
    with pytest.raises(ValidationError, match="routing.rule 'prm_threshold' .* none is configured"):
        ExperimentConfig.model_validate(
            data | {"prm": None, "routing": data["routing"] | {"rule": "prm_threshold"}}
        )
    with pytest.raises(ValidationError):
        ExperimentConfig.model_validate(data | {"routing": data["routing"] | {"rule": "oracle"}})
    served = ExperimentConfig.model_validate(
        data | {"routing": data["routing"] | {"rule": "prm_threshold"}}
    )
    assert served.models_for([served.routing.rule])[-1].name == served.prm.name


def test_an_endpoint_without_prefill_support_must_say_so() -> None:
    from pydantic import ValidationError

    from pipeline.config import EndpointConfig

    with pytest.raises(ValidationError, match="set prefill: false"):
        EndpointConfig(protocol="chat", server="openai", prefill=True)
    assert EndpointConfig(protocol="chat", server="openai", prefill=False).protocol == "chat"


def test_a_remote_models_path_is_the_servers_name_and_a_local_folder_its_tokenizer() -> None:
    from pipeline.config import local_paths_absolute

    cfg = load_config(REPO / "configs" / "testbed_endpoints.yaml")
    small = cfg.models[0]
    remote = local_paths_absolute(small)
    assert remote.path == small.path  # sent to the server as written
    assert Path(remote.tokenizer).is_absolute() and Path(remote.tokenizer).is_dir()
    hosted = local_paths_absolute(load_config(REPO / "configs" / "testbed.yaml").models[0])
    assert Path(hosted.path).is_absolute() and hosted.tokenizer is None


def test_direct_ingress_is_one_router_replica_at_the_root(tmp_path: Path) -> None:
    data = _minimal() | {"serve": {"ingress": "direct"}}
    assert load_config(_write(tmp_path, data)).serve.ingress == "direct"
    for extra in ({"router_replicas": 2}, {"route_prefix": "/v"}, {"autoscaling": {"x": 1}}):
        data = _minimal() | {"serve": {"ingress": "direct"} | extra}
        with pytest.raises(ConfigError, match="use ingress: proxy"):
            load_config(_write(tmp_path, data))


@pytest.mark.parametrize("cores", [[], [-1], [0, 0]])
def test_cpu_cores_must_be_distinct_ids(tmp_path: Path, cores: list[int]) -> None:
    data = _minimal()
    data["models"][0]["resources"] = {"cpu_cores": cores}
    with pytest.raises(ConfigError, match=r"models\.0\.resources\.cpu_cores"):
        load_config(_write(tmp_path, data))


def test_a_kappa_grid_reads_ranges_beside_numbers(tmp_path: Path) -> None:
    data = _minimal()
    data["calibration"] = {"grid_targets": [0.9, {"from": 0.1, "to": 0.3, "step": 0.05}, 0.2, 0.05]}
    data["evaluation"] = {"escalation_targets": [{"from": 0.25, "to": 0.75, "step": 0.25}]}
    cfg = load_config(_write(tmp_path, data))
    # Sorted, each share once, the range's end included.
    assert cfg.calibration.grid_targets == (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.9)
    assert cfg.evaluation.escalation_targets == (0.25, 0.5, 0.75)


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ([0.0, 0.5], "strictly between 0 and 1"),
        ([{"from": 0.5, "to": 1.0, "step": 0.25}], "strictly between 0 and 1"),
        ([{"from": 0.5, "to": 0.2, "step": 0.1}], "from <= to"),
        ([{"from": 0.1, "to": 0.2, "step": 0}], "step > 0"),
        ([{"from": 0.1, "to": 0.2}], "{from: A, to: B, step: S}"),
        (["0.5"], "neither a share nor"),
        ([], "at least one share"),
    ],
)
def test_a_bad_kappa_grid_is_refused_with_the_reason(
    tmp_path: Path, targets: list, message: str
) -> None:
    data = _minimal()
    data["calibration"] = {"grid_targets": targets}
    with pytest.raises(ConfigError, match="calibration.grid_targets") as err:
        load_config(_write(tmp_path, data))
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        ({"num_problems": 300, "seed": 9, "max_ops": 3}, "max_ops differ"),
        ({"num_problems": 300, "seed": 1}, "a seed of its own"),
    ],
)
def test_a_testbed_budget_pool_must_be_drawn_like_the_test(
    tmp_path: Path, pool: dict, message: str
) -> None:
    data = _minimal()
    data["dataset"] = {"name": "testbed", "testbed": {"num_problems": 500, "seed": 1}}
    data["calibration"] = {"budget_pool": {"name": "testbed", "testbed": pool}}
    with pytest.raises(ConfigError, match="calibration.budget_pool") as err:
        load_config(_write(tmp_path, data))
    assert message in str(err.value)
    data["calibration"]["budget_pool"]["testbed"] = {"num_problems": 300, "seed": 9}
    assert load_config(_write(tmp_path, data)).calibration.budget_pool.testbed["seed"] == 9
