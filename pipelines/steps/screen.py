"""Screening: exact per-token entropy of seed documents under the current policy, then the
high-entropy positions and the retrieval query around each (method step 1, docs/architecture.md).

A position t is a candidate when H_t > mu_d + alpha * sigma_d (mean and std over the document's
valid entropies) and t >= min_context; the highest-entropy candidates are taken greedily, at least
min_gap apart, at most max_positions, and returned in position order.

Position t indexes tokens: entropy[t] = H(x_t | x_<t) (pipelines/core/entropy.py), so the anchor of
a
position t is the token x_t whose prediction is uncertain. Its query is EntropyLong's window
centred on the anchor (q_i = x_{t_i-w : t_i+w}, w = 16; EntropyLong, arXiv 2510.02330):
screen.query_before tokens before x_t, x_t itself and screen.query_after tokens after it, clipped
at the document's edges.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipelines.core.atomic import replaced_atomically
from pipelines.core.config import ScreenSection
from pipelines.core.records import ScreenedDoc

log = logging.getLogger(__name__)

SCREEN_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("n_tokens", pa.int32()),
        ("entropy_mean", pa.float32()),
        ("entropy_std", pa.float32()),
        ("threshold", pa.float32()),
        ("positions", pa.list_(pa.int32())),
        ("position_entropies", pa.list_(pa.float32())),
        ("queries", pa.list_(pa.string())),
        ("policy_version", pa.int32()),
    ]
)


def entropy_threshold(entropy: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """(mean, std, mean + alpha * std) over the valid (non-NaN) entropies; NaNs if none."""
    valid = entropy[~np.isnan(entropy)]
    if valid.size == 0:
        return float("nan"), float("nan"), float("nan")
    mu, sigma = float(valid.mean()), float(valid.std())
    return mu, sigma, mu + alpha * sigma


def select_positions(
    entropy: np.ndarray, alpha: float, max_positions: int, min_gap: int, min_context: int
) -> list[int]:
    """High-entropy positions of one document, sorted (see the module docstring)."""
    entropy = np.asarray(entropy, dtype=np.float64)
    _, _, threshold = entropy_threshold(entropy, alpha)
    if np.isnan(threshold):
        return []
    t = np.arange(entropy.size)
    ok = (t >= max(1, min_context)) & ~np.isnan(entropy) & (entropy > threshold)
    candidates = t[ok]
    # Highest entropy first; ties go to the earlier position (stable sort on the negated value).
    order = candidates[np.argsort(-entropy[candidates], kind="stable")]
    chosen: list[int] = []
    for pos in order:
        if len(chosen) >= max_positions:
            break
        if all(abs(int(pos) - c) >= min_gap for c in chosen):
            chosen.append(int(pos))
    return sorted(chosen)


def query_window(n_tokens: int, pos: int, before: int, after: int) -> tuple[int, int]:
    """Token slice [start, stop) of the query for the anchor token pos of an n_tokens document:
    `before` tokens before it, the anchor itself and `after` tokens after it, clipped at the
    document's edges (before + 1 + after tokens when nothing is clipped)."""
    if not 0 <= pos < n_tokens:
        raise ValueError(f"anchor position {pos} is outside a document of {n_tokens} tokens")
    if before < 0 or after < 0:
        raise ValueError(f"query window sizes must be >= 0, got before={before} after={after}")
    return max(0, pos - before), min(n_tokens, pos + 1 + after)


def query_text(tokenizer, ids: list[int], pos: int, before: int, after: int) -> str:
    """The decoded query window around the anchor token ids[pos] (see query_window)."""
    start, stop = query_window(len(ids), pos, before, after)
    return tokenizer.decode(ids[start:stop], skip_special_tokens=True)


def screen_doc(
    doc_id: str,
    ids: list[int],
    entropy: np.ndarray,
    tokenizer,
    s: ScreenSection,
    version: int = 0,
) -> ScreenedDoc:
    """One document's screening from its entropies: statistics, positions, their queries."""
    mu, sigma, threshold = entropy_threshold(entropy, s.alpha)
    positions = select_positions(entropy, s.alpha, s.max_positions, s.min_gap, s.min_context)
    return ScreenedDoc(
        doc_id=doc_id,
        input_ids=list(ids),
        positions=positions,
        position_entropies=[float(entropy[p]) for p in positions],
        queries=[query_text(tokenizer, ids, p, s.query_before, s.query_after) for p in positions],
        entropy_mean=mu,
        entropy_std=sigma,
        threshold=threshold,
        policy_version=version,
        entropy=entropy,
    )


def screen_scored(
    docs: list[dict], scored: list[dict], tokenizer, screen: ScreenSection, version: int
) -> list[ScreenedDoc]:
    """screen_doc for every document of a batch a scorer returned entropies for."""
    return [
        screen_doc(d["doc_id"], d["input_ids"], s["entropy"], tokenizer, screen, version)
        for d, s in zip(docs, scored, strict=True)
    ]


def screen_batch(
    scorer, docs: list[dict], tokenizer, screen: ScreenSection, version: int
) -> list[ScreenedDoc]:
    """Step 1 for one batch of seed documents: exact entropies on a scorer actor (pi_version),
    then the positions and queries here. The one screening path (construction and `screen`)."""
    import ray

    return screen_scored(docs, ray.get(scorer.score.remote(docs)), tokenizer, screen, version)


def tokenize_docs(tokenizer, docs: pa.Table, max_doc_tokens: int) -> list[dict]:
    """[{doc_id, input_ids}] truncated to max_doc_tokens (documents under 2 tokens dropped)."""
    ids = tokenizer(docs["text"].to_pylist(), add_special_tokens=False)["input_ids"]
    out = [
        {"doc_id": d, "input_ids": x[:max_doc_tokens]}
        for d, x in zip(docs["doc_id"].to_pylist(), ids, strict=True)
    ]
    return [d for d in out if len(d["input_ids"]) >= 2]


def screen_documents(
    screen: ScreenSection,
    tokenizer,
    docs_table: pa.Table,
    scorers,
    out_path: str | Path | None = None,
) -> pa.Table:
    """Screen every document of docs_table (doc_id, text) on a pool of EntropyScorer actors."""
    from ray.util import ActorPool

    if not scorers:
        raise ValueError("screen_documents needs at least one EntropyScorer actor")
    docs = tokenize_docs(tokenizer, docs_table, screen.max_doc_tokens)
    size = screen.batch_docs
    batches = [docs[i : i + size] for i in range(0, len(docs), size)]
    pool = ActorPool(list(scorers))
    rows: list[dict] = []
    results = pool.map(lambda actor, batch: actor.score.remote(batch), batches)  # in order
    bar = tqdm(zip(batches, results, strict=True), total=len(batches), desc="screen", unit="batch")
    for batch, scored in bar:
        rows.extend(d.table_row() for d in screen_scored(batch, scored, tokenizer, screen, 0))
    table = pa.Table.from_pylist(rows, schema=SCREEN_SCHEMA)
    if out_path is not None:
        with replaced_atomically(Path(out_path)) as tmp:
            pq.write_table(table, tmp)
    n_pos = sum(len(r["positions"]) for r in rows)
    log.info("screen: %d documents, %d positions selected", len(rows), n_pos)
    return table
