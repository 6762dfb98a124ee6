"""EntropyScorer: a Ray actor holding one policy backend (HF or vLLM) and the chunked entropy math.

One engine per actor, started once and reused across stages; weights, version, probe and busy time
come from actors/policy_holder.py.

    scorers = create_scorers(cfg, model_dir)          # cluster.num_scorers actors
    rows = ray.get(scorers[0].screen.remote([{"doc_id": "a", "input_ids": [...]}]))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from actors.policy_holder import PolicyHolder
from pipelines.config import Config


class EntropyScorer(PolicyHolder):
    """Exact per-token entropies of documents under the currently loaded policy."""

    def __init__(self, cfg: Config, model_dir: str | Path, actor_index: int = 0, version: int = 0):
        super().__init__(
            cfg,
            model_dir,
            backend=cfg.screen.backend,
            gpus=cfg.cluster.gpus_per_scorer,
            engine_index=actor_index,
            version=version,
        )
        self._tokenizer = None

    def score(self, docs: list[dict]) -> list[dict]:
        """[{doc_id, input_ids}] -> [{doc_id, entropy}]: float32 [T], entropy[0] = NaN."""
        ents = self.timed(self.entropies, [list(d["input_ids"]) for d in docs])
        return [
            {"doc_id": d["doc_id"], "entropy": e.numpy().astype(np.float32)}
            for d, e in zip(docs, ents, strict=True)
        ]

    def screen(self, docs: list[dict]) -> list[dict]:
        """Score and select positions; one row per document (see pipelines.screen.screen_row)."""
        from pipelines.screen import screen_row

        if self._tokenizer is None:
            from pipelines.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.cfg.tokenizer.path or self.model_dir)
        return [
            screen_row(d["doc_id"], list(d["input_ids"]), s["entropy"], self._tokenizer, self.cfg)
            | {"policy_version": self.backend.version}
            for d, s in zip(docs, self.score(docs), strict=True)
        ]


def create_scorers(
    cfg: Config, model_dir: str | Path, num: int | None = None, version: int = 0
) -> list:
    """cluster.num_scorers EntropyScorer actors with cluster.cpus/gpus_per_scorer each."""
    import ray

    actor_cls = ray.remote(EntropyScorer).options(
        num_cpus=cfg.cluster.cpus_per_scorer, num_gpus=cfg.cluster.gpus_per_scorer
    )
    n = num if num is not None else cfg.cluster.num_scorers
    return [actor_cls.remote(cfg, str(model_dir), i, version) for i in range(n)]
