"""A group of interchangeable Ray actors of one class and one resource shape, as OpenRLHF's
`RayActorGroup` and NeMo-RL's worker groups: it creates them (restarts on), deals work to the
least-loaded one, and kills them all on shutdown.

    group = ActorGroup.create("scorer", EntropyScorer, cfg.resources.scorer, restarts,
                              lambda i: (spec(i), model_dir, version))
    with group.lease() as scorer:       # the actor with the fewest calls in flight
        ray.get(scorer.score.remote(docs))
    group.shutdown()

Restarts are Ray's: a crashed actor is restarted up to `restarts` times and the calls in flight
on it retried, so a caller holding a lease never sees the crash (the actor reloads its policy
from the fleet's pointer, actors/policy_holder.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import ray

from pipelines.core.config import RoleResources


class ActorGroup:
    def __init__(self, name: str, actors: list):
        self.name = name
        self.actors = list(actors)
        self._in_flight = [0] * len(self.actors)  # calls leased out now, per actor
        self._lock = threading.Lock()  # construction's batches lease from several threads

    @classmethod
    def create(
        cls,
        name: str,
        actor_class: type,
        resources: RoleResources,
        restarts: int,
        args_of: Callable[[int], tuple],
        count: int | None = None,
    ) -> ActorGroup:
        """`count` (default resources.count) actors, actor i built from args_of(i)."""
        remote_class = ray.remote(actor_class).options(
            num_cpus=resources.cpus,
            num_gpus=resources.gpus,
            resources=resources.resources or None,
            max_restarts=restarts,
            max_task_retries=restarts,
        )
        n = resources.count if count is None else count
        return cls(name, [remote_class.remote(*args_of(i)) for i in range(n)])

    @contextmanager
    def lease(self) -> Iterator:
        """The actor with the fewest leased calls (the lowest index on a tie), held for the
        block. Unlike dealing batch i to actor i % n, a slow actor is not given more work."""
        if not self.actors:
            raise RuntimeError(f"the {self.name} group has no actors")
        with self._lock:
            i = min(range(len(self.actors)), key=lambda j: (self._in_flight[j], j))
            self._in_flight[i] += 1
        try:
            yield self.actors[i]
        finally:
            with self._lock:
                self._in_flight[i] -= 1

    def in_flight(self) -> list[int]:
        with self._lock:
            return list(self._in_flight)

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors, self._in_flight = [], []

    def __len__(self) -> int:
        return len(self.actors)

    def __iter__(self) -> Iterator:
        return iter(self.actors)

    def __getitem__(self, i: int):
        return self.actors[i]
