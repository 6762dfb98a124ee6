"""Verifier: a Ray actor that checks whether a retrieved chunk really helps the current policy.

Step 3 of the method. For a candidate chunk c retrieved for positions T_c of document d:

    H_t(c) = H(x_t | c ⊕ d_<t)                    at exactly the positions t in T_c
    r      = mean over t in T_c of (H_t - H_t(c)) / H_t

r >= tau_pos: positive (a verified long-range dependency); r <= tau_neg: on-policy hard negative
(looked relevant to the retriever, gives the current policy nothing); otherwise discarded.
Only the hidden states at the needed positions go through the lm_head.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from actors.backends import make_backend, omp_bind_for
from pipelines.config import Config
from pipelines.entropy import entropies_at, token_entropies


def label_of(r: float, tau_pos: float, tau_neg: float) -> str:
    if r >= tau_pos:
        return "positive"
    if r <= tau_neg:
        return "negative"
    return "discarded"


class Verifier:
    """Entropy reduction of candidate chunks under the currently loaded policy."""

    def __init__(self, cfg: Config, model_dir: str | Path, actor_index: int = 0, version: int = 0):
        threads = cfg.cluster.torch_threads_per_actor
        torch.set_num_threads(threads)  # before the engine starts (see actors/scorer.py)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        self.cfg = cfg
        self.busy_s = 0.0
        max_len = cfg.screen.max_doc_tokens + cfg.index.chunk_tokens + 1
        self.backend = make_backend(
            cfg.verify.backend,
            model_dir,
            cfg.screen,
            max_model_len=max_len,
            omp_threads_bind=omp_bind_for(cfg.screen, cfg.cluster.num_scorers + actor_index),
            device="cuda" if cfg.cluster.gpus_per_verifier > 0 else "cpu",
            version=version,
        )

    def verify(self, doc: dict, candidates: list[dict]) -> list[dict]:
        """doc: {doc_id, input_ids, positions, position_entropies};
        candidates: [{chunk_id, input_ids, similarity, positions (subset of doc's)}].
        Returns per candidate {chunk_id, r, similarity, label, positions, entropies_with}."""
        start = time.perf_counter()
        try:
            return self._verify(doc, candidates)
        finally:
            self.busy_s += time.perf_counter() - start

    def verify_many(self, items: list[tuple[dict, list[dict]]]) -> list[list[dict]]:
        """verify() for every (doc, candidates) pair of a batch: one actor call per batch."""
        return [self.verify(doc, cands) if cands else [] for doc, cands in items]

    def busy_seconds(self) -> float:
        """Total time spent verifying: the overlap benchmark's per-actor busy time."""
        return self.busy_s

    def _verify(self, doc: dict, candidates: list[dict]) -> list[dict]:
        base = dict(zip(doc["positions"], doc["position_entropies"], strict=True))
        weight = self.backend.lm_head_weight()
        chunk = self.cfg.screen.lm_head_chunk_tokens
        ids = list(doc["input_ids"])
        out = []
        batch = self.cfg.verify.batch_candidates
        for start in range(0, len(candidates), batch):
            group = candidates[start : start + batch]
            # Only the prefix of d up to the last asked position is needed.
            seqs = [list(c["input_ids"]) + ids[: max(c["positions"]) + 1] for c in group]
            for cand, hidden in zip(group, self.backend.hidden_states(seqs), strict=True):
                shift = len(cand["input_ids"])
                with_c = entropies_at(hidden, weight, [shift + t for t in cand["positions"]], chunk)
                h0 = torch.tensor([base[t] for t in cand["positions"]])
                r = float(((h0 - with_c) / h0.clamp(min=1e-6)).mean())
                out.append(
                    {
                        "chunk_id": cand["chunk_id"],
                        "r": r,
                        "similarity": float(cand["similarity"]),
                        "label": label_of(r, self.cfg.verify.tau_pos, self.cfg.verify.tau_neg),
                        "positions": list(cand["positions"]),
                        "entropies_with": with_c.tolist(),
                    }
                )
        return out

    def load_weights(self, source: str | dict, version: int) -> int:
        self.backend.load_weights(source, version)
        return self.backend.version

    def policy_version(self) -> int:
        return self.backend.version

    def probe_entropy(self, input_ids: list[int]) -> list[float]:
        """Per-token entropies of a fixed probe, t = 1..T-1: compared with the trainer's."""
        hidden = self.backend.hidden_states([list(input_ids)])[0]
        weight = self.backend.lm_head_weight()
        return token_entropies(hidden, weight, self.cfg.screen.lm_head_chunk_tokens)[1:].tolist()


def create_verifiers(cfg: Config, model_dir: str | Path, version: int = 0) -> list:
    """cluster.num_verifiers Verifier actors with cluster.cpus/gpus_per_verifier each."""
    import ray

    actor_cls = ray.remote(Verifier).options(
        num_cpus=cfg.cluster.cpus_per_verifier, num_gpus=cfg.cluster.gpus_per_verifier
    )
    return [
        actor_cls.remote(cfg, str(model_dir), i, version) for i in range(cfg.cluster.num_verifiers)
    ]
