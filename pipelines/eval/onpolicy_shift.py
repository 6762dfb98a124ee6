"""How much on-policy screening changes, measured on a compare's runs of one seed: PolicyLong
(pi_k screens and verifies stage k) against its static ablation (pi_0 in every stage, the same
seed documents, the same document window).

    anchor overlap   per stage k >= 1, over the documents both runs screened: the Jaccard index
                     of the anchors (document, position) pi_k selected and those pi_0 selected
    r shift          PolicyLong's stage-k candidates (its own anchors and retrieved chunks) with
                     r recomputed under pi_0 beside r under pi_k: if the two distributions match,
                     the updated policy would have kept the same data

Entropies are recomputed here in float64 from full logits (no actor, no tiled kernel), so the
numbers check the pipeline as much as they describe it. If screening barely moves, the on-policy
mechanism the paper relies on is not at work in that setting: the report says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

QUANTILES = (0.1, 0.5, 0.9)


def _anchors(screen_dir: Path) -> dict[str, set[int]]:
    rows = pq.read_table(screen_dir, columns=["doc_id", "positions"]).to_pylist()
    return {r["doc_id"]: set(r["positions"]) for r in rows}


def anchor_overlap(policy_stage: Path, static_stage: Path) -> dict:
    a, b = _anchors(policy_stage / "screen"), _anchors(static_stage / "screen")
    common = sorted(set(a) & set(b))
    pairs_a = {(d, p) for d in common for p in a[d]}
    pairs_b = {(d, p) for d in common for p in b[d]}
    union = pairs_a | pairs_b
    return {
        "documents": len(common),
        "anchors_pi_k": len(pairs_a),
        "anchors_pi_0": len(pairs_b),
        "jaccard": round(len(pairs_a & pairs_b) / len(union), 4) if union else float("nan"),
    }


@torch.no_grad()
def entropies(model, ids: list[int]) -> np.ndarray:
    """H(x_t | x_<t) for every t (index 0: NaN), float64 from the full logits."""
    logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    h = -(logp.exp() * logp).sum(-1).numpy()
    return np.concatenate([[np.nan], h[:-1]])


def verifier_r(model, chunk: list[int], doc: list[int], positions: list[int]) -> float:
    """The verifier's r (actors/verifier.py): mean over the positions of (H - H(c)) / H, with
    the chunk placed right before the document."""
    prefix = doc[: max(positions) + 1]
    h0 = entropies(model, prefix)[positions]
    with_chunk = entropies(model, chunk + prefix)[[len(chunk) + t for t in positions]]
    return float(np.mean((h0 - with_chunk) / np.maximum(h0, 1e-6)))


def r_shift(stage: Path, pi0_dir: Path, docs: dict, chunks: dict, n: int, taus) -> dict:
    """The first n of the stage's candidates: r as logged (pi_k) and recomputed under pi_0."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(pi0_dir), dtype=torch.float32).eval()
    cands = pq.read_table(stage / "candidates").to_pylist()[:n]
    if not cands:
        return {"candidates": 0}
    r_k = np.array([c["r"] for c in cands])
    r_0 = np.array(
        [verifier_r(model, chunks[c["chunk_id"]], docs[c["doc_id"]], c["positions"]) for c in cands]
    )

    def label(r):
        return np.where(r >= taus[0], 1, np.where(r <= taus[1], -1, 0))

    return {
        "candidates": len(cands),
        "r_pi_k_quantiles": [round(float(q), 4) for q in np.quantile(r_k, QUANTILES)],
        "r_pi_0_quantiles": [round(float(q), 4) for q in np.quantile(r_0, QUANTILES)],
        "label_changed": round(float(np.mean(label(r_k) != label(r_0))), 4),
    }
