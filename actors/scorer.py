"""EntropyScorer: a Ray actor holding one policy backend (HF or vLLM) and the chunked entropy math.

One engine per actor, started once and reused across stages; between stages the driver calls
`load_weights` and checks `probe_entropy` against the trainer's value.

    scorers = create_scorers(cfg, model_dir)          # cluster.num_scorers actors
    rows = ray.get(scorers[0].screen.remote([{"doc_id": "a", "input_ids": [...]}]))
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from actors.backends import make_backend, omp_bind_for
from pipelines.config import Config
from pipelines.entropy import token_entropies

log = logging.getLogger(__name__)


class EntropyScorer:
    """Exact per-token entropies of documents under the currently loaded policy."""

    def __init__(self, cfg: Config, model_dir: str | Path, actor_index: int = 0, version: int = 0):
        threads = cfg.cluster.torch_threads_per_actor
        # Before any engine starts: vLLM's in-process worker replaces torch.set_num_threads, and
        # an unbound ("nobind") engine process takes its thread count from OMP_NUM_THREADS.
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        self.cfg = cfg
        self.screen_cfg = cfg.screen
        self.backend = make_backend(
            cfg.screen.backend,
            model_dir,
            cfg.screen,
            omp_threads_bind=omp_bind_for(cfg.screen, actor_index),
            device="cuda" if cfg.cluster.gpus_per_scorer > 0 else "cpu",
            version=version,
        )
        self.model_dir = str(model_dir)
        self._tokenizer = None
        self.busy_s = 0.0

    def _entropies(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        start = time.perf_counter()
        weight = self.backend.lm_head_weight()
        chunk = self.screen_cfg.lm_head_chunk_tokens
        out = [token_entropies(h, weight, chunk) for h in self.backend.hidden_states(sequences)]
        self.busy_s += time.perf_counter() - start
        return out

    def busy_seconds(self) -> float:
        """Total time spent scoring: the overlap benchmark's per-actor busy time."""
        return self.busy_s

    def score(self, docs: list[dict]) -> list[dict]:
        """[{doc_id, input_ids}] -> [{doc_id, entropy}]: float32 [T], entropy[0] = NaN."""
        ents = self._entropies([list(d["input_ids"]) for d in docs])
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

    def load_weights(self, source: str | dict[str, torch.Tensor], version: int) -> int:
        self.backend.load_weights(source, version)
        if isinstance(source, str | Path):
            self.model_dir = str(source)
        return self.backend.version

    def policy_version(self) -> int:
        return self.backend.version

    def probe_entropy(self, input_ids: list[int]) -> list[float]:
        """Per-token entropies H(x_t | x_<t) of a fixed probe for t = 1..T-1 (no NaN entry)."""
        return self._entropies([list(input_ids)])[0][1:].tolist()


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
