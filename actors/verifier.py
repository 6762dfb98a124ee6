"""Verifier: a Ray actor that checks whether a retrieved chunk really helps the current policy.

Step 3 of the method. For a candidate chunk c retrieved for positions T_c of document d:

    H_t(c) = H(x_t | c ⊕ d_<t)                    at exactly the positions t in T_c
    r      = mean over t in T_c of (H_t - H_t(c)) / H_t

r >= tau_pos: positive (a verified long-range dependency); r <= tau_neg: on-policy hard negative
(looked relevant to the retriever, gives the current policy nothing); otherwise discarded.
Only the hidden states at the needed positions go through the lm_head.
"""

from __future__ import annotations

from pathlib import Path

import torch

from actors.policy_holder import PolicyHolder
from pipelines.config import Config


def label_of(r: float, tau_pos: float, tau_neg: float) -> str:
    if r >= tau_pos:
        return "positive"
    if r <= tau_neg:
        return "negative"
    return "discarded"


class Verifier(PolicyHolder):
    """Entropy reduction of candidate chunks under the currently loaded policy."""

    def __init__(self, cfg: Config, model_dir: str | Path, actor_index: int = 0, version: int = 0):
        super().__init__(
            cfg,
            model_dir,
            backend=cfg.verify.backend,
            gpus=cfg.cluster.gpus_per_verifier,
            # one vLLM core binding per engine on the node: scorers first, then verifiers
            engine_index=cfg.cluster.num_scorers + actor_index,
            version=version,
            max_model_len=cfg.screen.max_doc_tokens + cfg.index.chunk_tokens + 1,
        )

    def verify(self, doc: dict, candidates: list[dict]) -> list[dict]:
        """doc: {doc_id, input_ids, positions, position_entropies};
        candidates: [{chunk_id, input_ids, similarity, positions (subset of doc's)}].
        Returns per candidate {chunk_id, r, similarity, label, positions, entropies_with}."""
        return self.timed(self._verify, doc, candidates)

    def verify_many(self, items: list[tuple[dict, list[dict]]]) -> list[list[dict]]:
        """verify() for every (doc, candidates) pair of a batch: one actor call per batch."""
        return [self.verify(doc, cands) if cands else [] for doc, cands in items]

    def _verify(self, doc: dict, candidates: list[dict]) -> list[dict]:
        base = dict(zip(doc["positions"], doc["position_entropies"], strict=True))
        ids = list(doc["input_ids"])
        out = []
        batch = self.cfg.verify.batch_candidates
        for start in range(0, len(candidates), batch):
            group = candidates[start : start + batch]
            # Only the prefix of d up to the last asked position is needed.
            seqs = [list(c["input_ids"]) + ids[: max(c["positions"]) + 1] for c in group]
            asked = [[len(c["input_ids"]) + t for t in c["positions"]] for c in group]
            for cand, with_c in zip(group, self.entropies_at(seqs, asked), strict=True):
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


def create_verifiers(cfg: Config, model_dir: str | Path, version: int = 0) -> list:
    """cluster.num_verifiers Verifier actors with cluster.cpus/gpus_per_verifier each."""
    import ray

    actor_cls = ray.remote(Verifier).options(
        num_cpus=cfg.cluster.cpus_per_verifier, num_gpus=cfg.cluster.gpus_per_verifier
    )
    return [
        actor_cls.remote(cfg, str(model_dir), i, version) for i in range(cfg.cluster.num_verifiers)
    ]
