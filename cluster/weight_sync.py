"""Weight broadcast: after stage k, every scorer and verifier loads pi_{k+1} before stage k+1.

One small interface, one module per transport (NeMo-RL style):

    transport_object_store   HF backends: config + state_dict put into Ray's object store once,
                             read by every actor (zero-copy on a node, one transfer per node)
    transport_checkpoint_dir vLLM backends: the HF checkpoint dir + `reload_weights`

After sending, each actor reports its policy version and the entropies of a fixed probe; they must
equal the trainer's own values, or the stage does not start.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import ray

from pipelines.errors import UserError

log = logging.getLogger(__name__)


class WeightTransport(Protocol):
    name: str

    def send(self, model_dir: Path, version: int, actors: list) -> None:
        """Make every actor load the policy in model_dir as `version`; returns when all have."""
        ...


def make_transport(kind: str, backend: str) -> WeightTransport:
    if kind == "auto":
        kind = "checkpoint_dir" if backend == "vllm" else "object_store"
    if kind == "object_store":
        if backend == "vllm":
            raise UserError(
                "stages.weight_transport 'object_store' needs HF backends: vLLM on CPU cannot "
                "load tensors after start-up; use 'checkpoint_dir' or 'auto'"
            )
        from cluster.transport_object_store import ObjectStoreTransport

        return ObjectStoreTransport()
    from cluster.transport_checkpoint_dir import CheckpointDirTransport

    return CheckpointDirTransport()


def broadcast(
    groups: list[tuple[WeightTransport, list]],
    model_dir: Path,
    version: int,
    probe_ids: list[int],
    expected: list[float],
    tolerance: float,
) -> dict:
    """Send pi_{version} to every actor group, then check versions and probe entropies."""
    start = time.perf_counter()
    for transport, actors in groups:
        if actors:
            transport.send(model_dir, version, actors)
    seconds = time.perf_counter() - start
    actors = [a for _, group in groups for a in group]
    versions = ray.get([a.policy_version.remote() for a in actors])
    probes = ray.get([a.probe_entropy.remote(probe_ids) for a in actors])
    diffs = [float(np.max(np.abs(np.asarray(p) - np.asarray(expected)))) for p in probes]
    if any(v != version for v in versions) or max(diffs) > tolerance:
        raise RuntimeError(
            f"weight broadcast of version {version} failed: actor versions {versions}, "
            f"probe entropy differences {diffs} (tolerance {tolerance})"
        )
    log.info(
        "broadcast: version %d to %d actors in %.2f s, probe max diff %.2e",
        version,
        len(actors),
        seconds,
        max(diffs),
    )
    return {
        "version": version,
        "actors": len(actors),
        "broadcast_s": seconds,
        "probe_max_diff": max(diffs),
    }
