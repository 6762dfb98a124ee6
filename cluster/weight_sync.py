"""Weight broadcast: after stage k, every scorer and verifier loads pi_{k+1} before stage k+1.

One small interface, one module per transport (NeMo-RL style):

    transport_checkpoint_dir the default ("auto"): every actor reloads the HF checkpoint the trainer
                             wrote. HF backends memory-map its safetensors (on CPU the parameters
                             are the shared page-cache pages: no copy at all); vLLM backends use
                             `reload_weights`, or restart when config.json changed. The run dir is
                             shared storage anyway (the sample log streams through it).
    transport_object_store   HF backends: config + state_dict put into Ray's object store once,
                             read by every actor (zero-copy on a node, one transfer per node):
                             for actors that should not read the run's storage.
    transport_collective     HF backends: one sender broadcasts flat buckets to every actor
                             (NCCL on GPUs, gloo on CPU): one storage read per sync.
    transport_vllm_api       `collective` with vLLM backends: the same idea through vLLM's own
                             weight-transfer API into the running engines (vLLM's NCCL engine
                             on GPUs, a gloo engine registered at run time on CPU).

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

from pipelines.core.errors import UserError

log = logging.getLogger(__name__)


class WeightTransport(Protocol):
    name: str

    def send(self, model_dir: Path, version: int, actors: list) -> None:
        """Make every actor load the policy in model_dir as `version`; returns when all have."""
        ...

    def close(self) -> None:
        """Release what the transport holds between syncs (the collective's sender)."""
        ...


def make_transport(
    kind: str, backend: str, bucket_mb: int = 256, device: str = "cpu"
) -> WeightTransport:
    if kind == "auto":
        kind = "checkpoint_dir"
    if kind == "object_store" and backend == "vllm":
        raise UserError(
            "stages.weight_transport 'object_store' needs HF backends (screen.backend / "
            "verify.backend 'hf'): a running vLLM engine takes tensors only through its "
            "weight-transfer API; use 'collective', 'checkpoint_dir' or 'auto'"
        )
    if kind == "collective" and backend == "vllm":
        from cluster.transport_vllm_api import VLLMWeightTransferTransport

        return VLLMWeightTransferTransport(bucket_mb, device)
    if kind == "object_store":
        from cluster.transport_object_store import ObjectStoreTransport

        return ObjectStoreTransport()
    if kind == "collective":
        from cluster.transport_collective import CollectiveTransport

        return CollectiveTransport(bucket_mb, device)
    from cluster.transport_checkpoint_dir import CheckpointDirTransport

    return CheckpointDirTransport()


def transport_groups(cfg, scorers: list, verifiers: list) -> list[tuple[WeightTransport, list]]:
    """(transport, actors) pairs: scorers and verifiers share one transport when theirs agree
    (one sender, one collective group per sync)."""
    stages, r = cfg.stages, cfg.resources

    def make(backend: str, gpus: float) -> WeightTransport:
        device = "cuda" if gpus > 0 else "cpu"
        return make_transport(stages.weight_transport, backend, stages.weight_bucket_mb, device)

    scorer_t = make(cfg.screen.backend, r.scorer.gpus)
    verifier_t = make(cfg.verify.backend, r.verifier.gpus)
    if scorer_t.name == verifier_t.name and r.scorer.gpus == r.verifier.gpus:
        return [(scorer_t, scorers + verifiers)]
    return [(scorer_t, scorers), (verifier_t, verifiers)]


def _send(transport: WeightTransport, model_dir: Path, version: int, actors: list) -> int:
    """transport.send, retried once from scratch when a process of the sync died (the sender,
    or an actor that Ray restarts): every actor loads the whole checkpoint again, and the probe
    check after it proves the result. A second failure is raised. Returns the retries used."""
    try:
        transport.send(model_dir, version, actors)
        return 0
    except ray.exceptions.RayError as e:
        log.warning(
            "weight sync of version %d over %s failed (%s); retrying once with a new sender",
            version,
            transport.name,
            str(e).splitlines()[0][:200],
        )
    transport.send(model_dir, version, actors)
    return 1


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
    retries = sum(_send(t, model_dir, version, actors) for t, actors in groups if actors)
    seconds = time.perf_counter() - start
    actors = [a for _, group in groups for a in group]
    versions = ray.get([a.policy_version.remote() for a in actors])
    restarts = ray.get([a.engine_restarts.remote() for a in actors])  # since each one started
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
        "transports": [t.name for t, group in groups if group],
        "engine_restarts": sum(restarts),  # vLLM engines restarted (architecture changes)
        "sync_retries": retries,
    }
