"""ray_cluster.yaml: valid for Ray's own cluster-launcher schema, and it offers the custom
resources the shipped configs' engines ask for."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def test_cluster_yaml_passes_ray_validation(cluster) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster)))
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["small_gpu"]["resources"]["GPU"] = 0.5
    with pytest.raises(Exception, match="integer"):
        validate_config(prepare_config(broken))


def test_every_engine_finds_a_node_type(cluster) -> None:
    offered = [t["resources"] for t in cluster["available_node_types"].values()]
    for path in sorted((REPO / "configs").glob("*.yaml")):
        for model in load_config(path).engine_models:  # the ladder and the PRM
            wanted = dict(model.resources.custom_resources)
            if model.resources.num_gpus:
                wanted["GPU"] = model.resources.num_gpus
            assert any(all(node.get(k, 0) >= v for k, v in wanted.items()) for node in offered), (
                f"{path.name}: model '{model.name}' needs {wanted}; no node type offers it"
            )
