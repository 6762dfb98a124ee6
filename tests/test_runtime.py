"""Work that this fixed-size local Ray could never schedule fails fast with one clear line
instead of waiting forever: the whole run's actors, Ray Train's workers included, before any
starts."""

from __future__ import annotations

import logging

import pytest

from pipelines.core.config import config_from_dict
from pipelines.core.errors import UserError
from pipelines.core.methods import method_spec
from pipelines.driver.placement import check_plan_fits, resource_plan


def _cfg(address: str = "", **resources):
    return config_from_dict({"cluster": {"address": address}, "resources": resources})


def test_train_that_cannot_fit_is_refused(ray_local):
    # Trainers are part of the run's plan (driver/placement.py), checked once before any actor
    # starts, not polled for per stage.
    too_big = _cfg(trainer={"count": 64, "cpus": 1.0})
    with pytest.raises(UserError, match="lower resources.<role>.count") as err:
        check_plan_fits(too_big, method_spec("concat"))
    assert "trainer 64" in str(err.value) and "\n" not in str(err.value)


def test_plan_that_fits_the_machine_passes(ray_local):
    # Every role together exactly the machine's CPUs (in halves) fits; a little more does not.
    total = ray_local.cluster_resources()["CPU"]
    base = _cfg(shard={"cpus": 0.0}, trainer={"count": 2, "cpus": 0.5})
    rest = total - sum(p["CPU"] for p in resource_plan(base, method_spec("concat")).values())
    fits = _cfg(shard={"cpus": 0.0}, trainer={"count": 2, "cpus": 0.5 + rest / 2})
    assert check_plan_fits(fits, method_spec("concat")) is None
    over = _cfg(shard={"cpus": 0.0}, trainer={"count": 2, "cpus": 0.5 + rest / 2 + 0.05})
    with pytest.raises(UserError, match="resources.<role>"):
        check_plan_fits(over, method_spec("concat"))


def test_joined_cluster_is_not_refused(ray_local, caplog):
    # An autoscaling cluster may add nodes: only a local Ray is known to be fixed in size.
    # The ask is logged instead; the same resources on the local Ray are refused.
    caplog.set_level(logging.INFO, logger="pipelines.driver.placement")
    too_big = {"trainer": {"count": 64, "cpus": 1.0}}
    joined = _cfg("auto", **too_big)
    check_plan_fits(joined, method_spec("policylong"))
    asks = [r.getMessage() for r in caplog.records if r.name == "pipelines.driver.placement"]
    plan = resource_plan(joined, method_spec("policylong")).values()
    need = {k: sum(p[k] for p in plan) for k in ("CPU", "GPU")}
    assert need["CPU"] > 64 and f"the run asks the cluster for {need}" in asks, asks
    with pytest.raises(UserError, match="lower resources.<role>.count"):
        check_plan_fits(_cfg("", **too_big), method_spec("policylong"))


def test_run_whose_roles_together_do_not_fit_is_refused_naming_each_role(ray_local):
    cfg = _cfg(scorer={"count": 4, "cpus": 64.0}, trainer={"count": 2, "cpus": 0.5})
    with pytest.raises(UserError) as err:
        check_plan_fits(cfg, method_spec("policylong"))
    line = str(err.value)
    assert "scorer 256" in line and "trainer 1" in line and "resources.<role>" in line, line
    assert "\n" not in line
    # concat runs no scorer, verifier or embedder (only the shards, for fillers): it fits
    check_plan_fits(cfg, method_spec("concat"))


def test_plan_counts_only_the_roles_a_method_runs():
    cfg = _cfg(shard={"cpus": 0.1}, embedder={"cpus": 0.25})
    assert set(resource_plan(cfg, method_spec("policylong"))) == {
        "scorer", "verifier", "trainer", "shard", "embedder",
    }  # fmt: skip
    assert set(resource_plan(cfg, method_spec("nextlong"))) == {"trainer", "shard", "embedder"}
    assert set(resource_plan(cfg, method_spec("concat"))) == {"trainer", "shard"}  # fillers
    shards = resource_plan(cfg, method_spec("nextlong"))["shard"]["CPU"]
    assert shards == pytest.approx(cfg.index.num_shards * 0.1)


def test_a_construct_only_run_reserves_no_trainer():
    import dataclasses

    cfg = _cfg(shard={"cpus": 0.1}, embedder={"cpus": 0.25})
    cfg = dataclasses.replace(cfg, stages=dataclasses.replace(cfg.stages, train=False))
    assert set(resource_plan(cfg, method_spec("policylong"))) == {
        "scorer", "verifier", "shard", "embedder",
    }  # fmt: skip
