"""Where a run's actors go: what each role reserves from Ray, and whether the roles together
fit a local Ray before any actor starts (a fixed-size machine would otherwise hang)."""

from __future__ import annotations

import logging
import os

from pipelines.core.config import Config
from pipelines.core.errors import UserError
from pipelines.core.methods import MethodSpec

log = logging.getLogger(__name__)


def resource_plan(cfg: Config, method: MethodSpec) -> dict[str, dict[str, float]]:
    """What each role of a run reserves from Ray, in total: {role: {"CPU": .., "GPU": ..}}."""
    r = cfg.resources
    groups = {"trainer": r.trainer} if cfg.stages.train else {}  # constructing only: none
    if method.screens:
        groups |= {"scorer": r.scorer, "verifier": r.verifier}
    plan = {role: {"CPU": g.count * g.cpus, "GPU": g.count * g.gpus} for role, g in groups.items()}
    # Every method's filler chunks come from the shards (pipelines/steps/assemble.py FillerPool).
    plan["shard"] = {"CPU": cfg.index.num_shards * r.shard.cpus, "GPU": 0.0}
    if method.retrieves:
        plan["embedder"] = {"CPU": r.embedder.cpus, "GPU": 0.0}
    return plan


def check_plan_fits(cfg: Config, method: MethodSpec) -> None:
    """Before any actor starts: on a local Ray (nothing can scale up) the roles together must
    fit the machine, else one line with the sums and the keys to change. A joined cluster's
    autoscaler may add nodes: there the plan is only logged."""
    import ray

    plan = resource_plan(cfg, method)
    need = {k: sum(p[k] for p in plan.values()) for k in ("CPU", "GPU")}
    if cfg.cluster.address or os.environ.get("RAY_ADDRESS"):
        log.info("the run asks the cluster for %s", need)
        return
    total = ray.cluster_resources()
    short = [k for k, v in need.items() if v > total.get(k, 0.0) + 1e-6]
    if short:
        k = short[0]
        parts = ", ".join(f"{role} {p[k]:g}" for role, p in plan.items() if p[k])
        raise UserError(
            f"the run's actors need {need[k]:g} {k} ({parts}) but this local Ray has "
            f"{total.get(k, 0.0):g}: lower resources.<role>.count or .{k.lower()}s"
        )
