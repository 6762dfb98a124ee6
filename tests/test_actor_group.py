"""The actor group (cluster/actor_group.py) on real Ray actors: least-loaded dispatch, Ray's
restart of a crashed actor under a lease, and shutdown."""

from __future__ import annotations

import os
import sys
import threading

import pytest
import ray.cloudpickle

from cluster.actor_group import ActorGroup
from pipelines.core.config import RoleResources

# Ray's workers cannot import a test module: its actor classes travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class _Worker:
    def __init__(self, name: str):
        self.name = name

    def who(self) -> tuple[str, int]:
        return self.name, os.getpid()

    def wait_for(self, event) -> str:
        # Blocks until the test sets the event: a call that is still in flight.
        import ray

        ray.get(event.wait.remote())
        return self.name


class _Event:
    def __init__(self):
        self._set = threading.Event()

    def set(self) -> None:
        self._set.set()

    def wait(self) -> bool:
        return self._set.wait(timeout=60)


def _group(n: int, restarts: int = 0) -> ActorGroup:
    shape = RoleResources(count=n, cpus=0.0)
    return ActorGroup.create("worker", _Worker, shape, restarts, lambda i: (f"w{i}",))


@pytest.mark.timeout(120)
def test_a_busy_actor_is_not_dealt_more_work(ray_local):
    ray = ray_local
    group = _group(3)
    event = ray.remote(_Event).options(num_cpus=0, max_concurrency=4).remote()
    try:
        # Two long calls in flight: the group leases the idle actors first, never a busy one.
        with group.lease() as a, group.lease() as b:
            busy = [a.wait_for.remote(event), b.wait_for.remote(event)]
            assert group.in_flight() == [1, 1, 0]
            with group.lease() as c:
                assert ray.get(c.who.remote())[0] == "w2"
            with group.lease() as d:  # w2 is free again: the least loaded
                assert ray.get(d.who.remote())[0] == "w2"
            ray.get(event.set.remote())
            assert sorted(ray.get(busy)) == ["w0", "w1"]
        assert group.in_flight() == [0, 0, 0]
        # All idle: the lowest index (deterministic, so a one-actor run deals like before).
        with group.lease() as e:
            assert ray.get(e.who.remote())[0] == "w0"
        # A lease that raises still gives its actor back.
        with pytest.raises(ValueError), group.lease():
            raise ValueError("caller failed")
        assert group.in_flight() == [0, 0, 0]
    finally:
        group.shutdown()
        ray.kill(event)


@pytest.mark.timeout(120)
def test_a_crashed_actor_is_restarted_and_shutdown_kills_all(ray_local):
    ray = ray_local
    group = _group(2, restarts=1)
    first_pid = ray.get(group[0].who.remote())[1]
    os.kill(first_pid, 9)
    # Ray restarts the actor (same handle, new process) and retries the call: the caller's
    # lease never sees the crash.
    with group.lease() as actor:
        name, pid = ray.get(actor.who.remote(), timeout=60)
    assert name == "w0" and pid != first_pid
    actors = list(group)
    group.shutdown()
    assert len(group) == 0
    for actor in actors:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(actor.who.remote(), timeout=30)
