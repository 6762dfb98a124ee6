"""ray_cluster.yaml is a cluster config Ray accepts (validated against the JSON schema Ray ships
for `ray up`), and the paper-scale profile's actors fit the cluster it describes."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from pipelines.core.config import load_config
from pipelines.core.methods import method_spec
from pipelines.driver.placement import resource_plan

REPO = Path(__file__).resolve().parents[1]
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def test_cluster_config_validates_against_rays_schema(cluster):
    jsonschema.validate(cluster, json.loads(SCHEMA.read_text()))


def test_the_schema_check_catches_a_broken_config(cluster):
    broken = cluster | {"max_workers": "many"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads(SCHEMA.read_text()))


def test_cluster_has_the_roles_the_runs_need(cluster):
    types = cluster["available_node_types"]
    assert set(types) == {"head", "cpu_worker", "gpu_worker"}
    assert types["head"]["resources"] == {"CPU": 0, "GPU": 0}  # the driver only
    assert (
        types["gpu_worker"]["resources"]["GPU"] > 0
        and "GPU" not in types["cpu_worker"]["resources"]
    )
    for t in ("cpu_worker", "gpu_worker"):
        assert 0 <= types[t]["min_workers"] <= types[t]["max_workers"] <= cluster["max_workers"]
    assert cluster["idle_timeout_minutes"] > 0 and "docker" in cluster
    assert any("[gpu]" in c for c in cluster["setup_commands"])


def test_paper_profile_fits_the_cluster_at_full_scale(cluster):
    cfg = load_config(REPO / "configs" / "qwen2.5-3b-128k.yaml")
    plan = resource_plan(cfg, method_spec(cfg.stages.method))
    need = {k: sum(p[k] for p in plan.values()) for k in ("CPU", "GPU")}
    types = cluster["available_node_types"].values()
    have = {
        k: sum(t.get("max_workers", 0) * t["resources"].get(k, 0) for t in types)
        for k in ("CPU", "GPU")
    }
    assert need["GPU"] > 0 and all(need[k] <= have[k] for k in need), (need, have)
    # one actor never asks for more than one node offers
    biggest = {k: max(t["resources"].get(k, 0) for t in types) for k in ("CPU", "GPU")}
    for role, group in (("scorer", cfg.resources.scorer), ("trainer", cfg.resources.trainer)):
        assert group.cpus <= biggest["CPU"] and group.gpus <= biggest["GPU"], role
