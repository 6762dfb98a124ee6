"""EntropyScorer: a Ray actor holding one policy backend (HF or vLLM) and the chunked entropy math.

One engine per actor, started once and reused across stages; weights, version, probe and busy time
come from actors/policy_holder.py.

    scorers = create_scorers(cfg, model_dir)          # resources.scorer.count actors
    [scored] = ray.get(scorers[0].score.remote([{"doc_id": "a", "input_ids": [...]}]))
    # positions and queries from the entropies: pipelines/steps/screen.py (screen_batch)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from actors.policy_holder import PolicyHolder, PolicySpec
from pipelines.core.config import Config


class EntropyScorer(PolicyHolder):
    """Exact per-token entropies of documents under the currently loaded policy."""

    def score(self, docs: list[dict]) -> list[dict]:
        """[{doc_id, input_ids}] -> [{doc_id, entropy}]: float32 [T], entropy[0] = NaN."""
        ents = self.timed(self.entropies, [list(d["input_ids"]) for d in docs])
        return [
            {"doc_id": d["doc_id"], "entropy": e.numpy().astype(np.float32)}
            for d, e in zip(docs, ents, strict=True)
        ]


def scorer_spec(cfg: Config, actor_index: int, pointer: str = "") -> PolicySpec:
    gpus = cfg.resources.scorer.gpus
    return PolicySpec.for_role(cfg, cfg.screen.backend, gpus, actor_index, pointer)


def create_scorers(
    cfg: Config, model_dir: str | Path, num: int | None = None, version: int = 0, pointer: str = ""
):
    """resources.scorer.count EntropyScorer actors, each with resources.scorer's CPUs/GPUs, as
    one ActorGroup (cluster/actor_group.py). A crashed one is restarted
    (cluster.actor_max_restarts) and its calls retried; it then loads the policy `pointer`
    names (PolicySpec)."""
    from cluster.actor_group import ActorGroup

    return ActorGroup.create(
        "scorer", EntropyScorer, cfg.resources.scorer, cfg.cluster.actor_max_restarts,
        lambda i: (scorer_spec(cfg, i, pointer), str(model_dir), version), count=num,
    )  # fmt: skip
