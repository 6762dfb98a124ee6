"""A guard between test modules: an actor or placement group a module leaves alive keeps its
Ray resources for the rest of the session (2 CPUs here), and a later run then cannot place its
trainers. At each module's end, whatever it left alive is removed and named in a warning."""

from __future__ import annotations

import time
import warnings


def _connected_ray():
    """The ray module when this process is connected, else None (a module that never used Ray
    costs no import)."""
    import sys

    ray = sys.modules.get("ray")
    return ray if ray is not None and ray.is_initialized() else None


def alive_ids() -> tuple[set[str], set[str]]:
    """(alive actor ids, created placement group ids) of the connected Ray, or empty sets."""
    ray = _connected_ray()
    if ray is None:
        return set(), set()
    from ray._private import state  # the GCS's tables; the state API needs the dashboard

    # this process's job only: a driver the tests started and killed leaves actors that Ray
    # removes with its job, and this process holds no handle to kill them by
    job = ray.get_runtime_context().get_job_id()
    actors = {k for k, v in state.actors().items() if v["State"] != "DEAD" and v["JobID"] == job}
    groups = {k for k, v in ray.util.placement_group_table().items() if v["state"] == "CREATED"}
    return actors, groups


def free_cpus() -> float | None:
    """The connected Ray's free CPUs, or None."""
    ray = _connected_ray()
    return None if ray is None else ray.available_resources().get("CPU", 0.0)


def warn_if_cpus_held(before: float | None, module: str, grace_s: float = 5.0) -> None:
    """A module may hold CPUs by what the tables above do not show (another job's actors, a
    task still running): name the amount, so the next failure says where it started."""
    deadline = time.monotonic() + grace_s
    while before is not None and (now := free_cpus()) is not None and now + 1e-6 < before:
        if time.monotonic() > deadline:
            warnings.warn(f"{module} left {before - now:g} CPU held in Ray", stacklevel=2)
            return
        time.sleep(0.5)


def remove_leaks(before: tuple[set[str], set[str]], module: str, grace_s: float = 10.0) -> None:
    """Kill the actors and remove the placement groups that are alive now but were not before;
    ray.kill is asynchronous, so first give the module's own kills a moment to land."""
    import ray

    deadline = time.monotonic() + grace_s
    while True:
        actors, groups = (now - old for now, old in zip(alive_ids(), before, strict=True))
        if not (actors or groups) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if not (actors or groups):
        return
    from ray._private import state

    table = state.actors()
    names = sorted(table[a]["ActorClassName"] for a in actors if a in table)
    from ray.util.placement_group import PlacementGroup

    core = ray._private.worker.global_worker.core_worker  # kills by id: no handle survives here
    for a in actors:
        core.kill_actor(ray.ActorID(bytes.fromhex(a)), True)
    for g in groups:
        try:
            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(g))))
        except Exception:  # noqa: BLE001 - already removed with its job
            pass
    deadline = time.monotonic() + 30  # removal is asynchronous too: wait for the resources
    while any(now & leaked for now, leaked in zip(alive_ids(), (actors, groups), strict=True)):
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    time.sleep(2.0)  # the resource view trails the tables by ~0.5 s (measured)
    warnings.warn(
        f"{module} left Ray actors {names} and {len(groups)} placement group(s) alive", stacklevel=2
    )
