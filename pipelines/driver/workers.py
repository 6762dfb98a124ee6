"""A run's workers built from its config: the one place that reads the whole Config to start
them, so the actors and steps below take only the sections they use.

    create_scorers / create_verifiers   policy actor groups (cluster/actor_group.py)
    scorer_spec / verifier_spec         what one policy actor needs (actors/policy_holder.py)
    retriever_for                       the sharded FAISS index and its embedder (step 2)
    filler_shards                       the shards alone, for a method that does not retrieve
"""

from __future__ import annotations

from pathlib import Path

from actors.policy_holder import PolicySpec
from actors.scorer import EntropyScorer
from actors.verifier import Verifier
from cluster.actor_group import ActorGroup
from pipelines.core.config import Config
from pipelines.core.index_format import verify_index
from pipelines.steps.retrieve import Retriever, start_shards


def _policy_spec(cfg: Config, backend: str, gpus: float, engine: int, pointer: str, **kw):
    """A scorer's or verifier's spec: the screen section, threads and probe tolerance."""
    threads, tolerance = cfg.resources.torch_threads_per_actor, cfg.stages.probe_tolerance
    return PolicySpec(
        backend, cfg.screen, threads, gpus, engine, pointer=pointer, probe_tolerance=tolerance,
        **kw,
    )  # fmt: skip


def scorer_spec(cfg: Config, actor_index: int, pointer: str = "") -> PolicySpec:
    gpus = cfg.resources.scorer.gpus
    return _policy_spec(cfg, cfg.screen.backend, gpus, actor_index, pointer)


def verifier_spec(cfg: Config, actor_index: int, pointer: str = "") -> PolicySpec:
    r = cfg.resources
    # one vLLM core binding per engine on the node: scorers first, then verifiers
    engine = r.scorer.count + actor_index
    max_len = cfg.screen.max_doc_tokens + cfg.index.chunk_tokens + 1
    return _policy_spec(
        cfg, cfg.verify.backend, r.verifier.gpus, engine, pointer, max_model_len=max_len
    )


def create_scorers(
    cfg: Config, model_dir: str | Path, num: int | None = None, version: int = 0, pointer: str = ""
) -> ActorGroup:
    """resources.scorer.count EntropyScorer actors, each with resources.scorer's CPUs/GPUs. A
    crashed one is restarted (cluster.actor_max_restarts) and its calls retried; it then loads
    the policy `pointer` names (PolicySpec)."""
    return ActorGroup.create(
        "scorer", EntropyScorer, cfg.resources.scorer, cfg.cluster.actor_max_restarts,
        lambda i: (scorer_spec(cfg, i, pointer), str(model_dir), version), count=num,
    )  # fmt: skip


def create_verifiers(
    cfg: Config, model_dir: str | Path, version: int = 0, pointer: str = ""
) -> ActorGroup:
    """resources.verifier.count Verifier actors, restarted after a crash like the scorers."""
    return ActorGroup.create(
        "verifier", Verifier, cfg.resources.verifier, cfg.cluster.actor_max_restarts,
        lambda i: (verifier_spec(cfg, i, pointer), cfg.verify, str(model_dir), version),
    )  # fmt: skip


def retriever_for(cfg: Config, index_dir: str | Path | None = None) -> Retriever:
    r = cfg.resources
    return Retriever(
        index_dir or cfg.run_dir / "index", cfg.index, r.shard.cpus, r.torch_threads_per_actor,
        embedder_cpus=r.embedder.cpus, restarts=cfg.cluster.actor_max_restarts,
    )  # fmt: skip


def filler_shards(cfg: Config, index_dir: str | Path) -> tuple[ActorGroup, list[int]]:
    """The shard actors alone (no embedder), for a method that only needs filler chunks."""
    index_dir = Path(index_dir)
    num_shards = len(verify_index(index_dir)["shards"])
    r = cfg.resources
    return start_shards(
        index_dir, num_shards, cfg.index, r.shard.cpus, r.torch_threads_per_actor,
        cfg.cluster.actor_max_restarts,
    )  # fmt: skip
