"""The fleet: the one owner of a run's long-lived workers.

    scorers    EntropyScorer actors (step 1)           ) hold the policy; only for methods that
    verifiers  Verifier actors (step 3)                ) screen (pipelines/core/methods.py)
    transports weight sync to them (cluster/weight_sync.py)
    retriever  the sharded FAISS index and its query embedder (step 2)
    fillers    random chunks that pad a sample (step 4), sampled by the retriever's shards (or,
               for a method that does not retrieve, by shard actors started for that alone)

Used as a context manager: whatever happens inside, no actor, transport or retrieval shard
outlives it. Start-up (engines, the entropy kernel's compilation, the embedder) is paid in
`warmup`, once per run, not inside a stage's clock.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, wait
from pathlib import Path

import ray

from cluster.actor_group import ActorGroup
from pipelines.core.atomic import write_json_atomic
from pipelines.core.config import Config
from pipelines.core.methods import MethodSpec
from pipelines.core.records import sync_probe_file
from pipelines.steps.assemble import FillerPool

log = logging.getLogger(__name__)
STRAGGLER_WAIT_S = 60.0  # at most one actor call each: they stop at their next step


class Fleet:
    def __init__(self, cfg: Config, method: MethodSpec, index_dir: Path):
        self.cfg, self.method = cfg, method
        self.scorers = ActorGroup("scorer", [])  # cluster/actor_group.py
        self.verifiers = ActorGroup("verifier", [])
        self.transports: list = []  # (WeightTransport, actors) pairs
        self.retriever = None  # pipelines.steps.retrieve.Retriever, for methods that retrieve
        self.filler_shards = ActorGroup("shard", [])  # of a method that does not retrieve
        self.fillers: FillerPool | None = None  # set by start()
        self.index_dir = index_dir
        # Construction batches a stage left in flight (construct.py): close() lets them end
        # before it kills the actors they call, else Ray logs each killed call as a failure.
        self.stragglers: list[Future] = []
        # The policy the actors hold now, for any actor Ray restarts (actors/policy_holder.py).
        self.pointer = (cfg.run_dir / "fleet_policy.json").resolve()

    def start(self, policy_dir: Path, version: int) -> Fleet:
        """Create every worker the method needs, the policy actors holding pi_version, once the
        whole plan (trainers included) is known to fit (driver/placement.py): one clear line
        instead of actors, or later Ray Train, waiting forever for resources."""
        from cluster.weight_sync import transport_groups
        from pipelines.driver.placement import check_plan_fits
        from pipelines.driver.workers import (
            create_scorers,
            create_verifiers,
            filler_shards,
            retriever_for,
        )

        check_plan_fits(self.cfg, self.method)
        if self.method.screens:
            self._point_to(policy_dir, version)
            pointer = str(self.pointer)
            self.scorers = create_scorers(self.cfg, policy_dir, version=version, pointer=pointer)
            self.verifiers = create_verifiers(self.cfg, policy_dir, version, pointer)
            self.transports = transport_groups(self.cfg, self.scorers.actors, self.verifiers.actors)
        if self.method.retrieves:
            self.retriever = retriever_for(self.cfg, self.index_dir)
            shards, sizes = self.retriever.shards, self.retriever.sizes
        else:
            shards, sizes = filler_shards(self.cfg, self.index_dir)
            self.filler_shards = shards
        self.fillers = FillerPool(shards, sizes, self.cfg.index.filler_batch)
        return self

    @property
    def policy_actors(self) -> list:
        return self.scorers.actors + self.verifiers.actors

    def warmup(self) -> None:
        ready = time.perf_counter()
        ray.get([a.warmup.remote() for a in self.policy_actors])
        if self.retriever is not None:
            self.retriever.search(["warm-up query"], [""])
        log.info("actors ready in %.1f s", time.perf_counter() - ready)

    def broadcast(self, policy_dir: Path, version: int, probe_ids: list[int], tolerance: float):
        """Every scorer and verifier loads pi_version and proves it on the probe against the
        trainer's own entropies (policy_dir/sync_probe.json); the broadcast's record."""
        from cluster.weight_sync import broadcast

        expected = json.loads(sync_probe_file(policy_dir).read_text())["entropies"]
        self._point_to(policy_dir, version)  # first: an actor restarted mid-send loads it too
        return broadcast(self.transports, policy_dir, version, probe_ids, expected, tolerance)

    def _point_to(self, policy_dir: Path, version: int) -> None:
        pointer = {"model_dir": str(Path(policy_dir).resolve()), "version": version}
        write_json_atomic(self.pointer, pointer)

    def busy_seconds(self) -> dict[str, float]:
        """Seconds each policy actor has spent working since it started (scorer0, verifier0, ..)."""
        names = [f"scorer{i}" for i in range(len(self.scorers))]
        names += [f"verifier{i}" for i in range(len(self.verifiers))]
        busy = ray.get([a.busy_seconds.remote() for a in self.policy_actors])
        return dict(zip(names, busy, strict=True))

    def close(self) -> None:
        wait(self.stragglers, timeout=STRAGGLER_WAIT_S)
        self.stragglers = []
        for transport, _ in self.transports:
            transport.close()
        self.scorers.shutdown()
        self.verifiers.shutdown()
        if self.retriever is not None:
            self.retriever.close()
        self.filler_shards.shutdown()
        self.transports, self.retriever, self.fillers = [], None, None

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
