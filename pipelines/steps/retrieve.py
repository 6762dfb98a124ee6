"""Step 2 — retrieve: the chunks that may resolve a screened document's uncertain positions.

`candidates_for` (PolicyLong, EntropyLong) and `meta_chunk_hits` (NExtLong) turn documents
into Candidates through the Retriever, the driver-side client of the sharded index.

The Retriever verifies the index on disk, starts one RetrievalShard actor per shard and one
Embedder actor, and answers batched queries: embed the query texts, fan the batch out to every
shard at once, merge the shards' top lists, and drop chunks of the query's own document. Shards
are asked for k + `index.exclude_margin` hits; a query that still has too few after exclusion
(its own document crowds the top) is asked again with twice as many, so every query gets k hits
when the index holds k chunks of other documents. With flat shards the merged result equals one
flat index over all vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

from actors.embedder import embedder_threads
from pipelines.core.config import IndexSection, RoleResources
from pipelines.core.errors import UserError
from pipelines.core.index_format import verify_index
from pipelines.core.records import Candidate, ScreenedDoc
from pipelines.world.chunking import shard_of


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    doc_id: str
    score: float  # inner product of unit vectors = cosine similarity


def _unwrap(e: Exception) -> Exception:
    """A UserError raised inside an actor reaches the driver wrapped; give back the original."""
    cause = getattr(e, "cause", None) or getattr(e, "__cause__", None)
    return cause if isinstance(cause, UserError) else e


class Retriever:
    def __init__(
        self,
        index_dir: str | Path,
        cfg: IndexSection,
        cpus_per_shard: float = 0.25,
        shard_threads: int = 1,
        embedder=None,
        embedder_cpus: float = 1.0,
        restarts: int = 0,
    ):
        self.index_dir = Path(index_dir)
        self.cfg = cfg
        self.manifest = verify_index(self.index_dir)
        if self.manifest["embedder"] != cfg.embedder:
            raise UserError(
                f"index '{self.index_dir}' was built with embedder '{self.manifest['embedder']}' "
                f"but index.embedder is '{cfg.embedder}': rebuild with `policylong build-index`"
            )
        from actors.embedder import Embedder

        self.num_shards = len(self.manifest["shards"])
        self.shards, self.sizes = start_shards(
            self.index_dir, self.num_shards, cfg, cpus_per_shard, shard_threads, restarts
        )
        self._owns_embedder = embedder is None  # a shared embedder outlives this client
        self.embedder = embedder or Embedder.options(
            num_cpus=embedder_cpus, max_restarts=restarts, max_task_retries=restarts
        ).remote(cfg.embedder, cfg.embed_batch_size, embedder_threads(embedder_cpus))

    @staticmethod
    def _get(refs):
        try:
            return ray.get(refs)
        except ray.exceptions.RayError as e:
            raise _unwrap(e) from None

    def embed(self, texts: list[str]) -> np.ndarray:
        return self._get(self.embedder.embed.remote(list(texts)))

    def search(
        self, query_texts: list[str], exclude_doc_ids: list[str | None], k: int | None = None
    ) -> list[list[Hit]]:
        """Per query text, its top-k chunks of other documents than exclude_doc_ids[i]."""
        return self.search_vectors(self.embed(query_texts), exclude_doc_ids, k)

    def search_vectors(
        self, vectors: np.ndarray, exclude_doc_ids: list[str | None], k: int | None = None
    ) -> list[list[Hit]]:
        k = k or self.cfg.top_k
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(exclude_doc_ids) != len(vectors):
            raise ValueError(f"{len(vectors)} queries but {len(exclude_doc_ids)} exclude ids")
        results: list[list[Hit] | None] = [None] * len(vectors)
        pending = list(range(len(vectors)))
        want = k + self.cfg.exclude_margin
        while pending:
            batch = ray.put(vectors[pending])
            per_shard = self._get([s.search.remote(batch, want) for s in self.shards])
            still = []
            for j, q in enumerate(pending):
                lists = [shard_rows[j] for shard_rows in per_shard]
                hits, done = _merge(lists, exclude_doc_ids[q], k, want)
                if done:
                    results[q] = hits
                else:
                    still.append(q)
            pending, want = still, want * 2
        return results  # type: ignore[return-value]

    def get_chunks(self, chunk_ids: list[str]) -> list[dict]:
        """Chunk rows (chunk_id, doc_id, text, input_ids, ...) in the order asked."""
        by_shard: dict[int, list[int]] = {}
        for i, c in enumerate(chunk_ids):
            by_shard.setdefault(shard_of(c, self.num_shards), []).append(i)
        refs = {
            s: self.shards[s].get_chunks.remote([chunk_ids[i] for i in idx])
            for s, idx in by_shard.items()
        }
        out: list[dict | None] = [None] * len(chunk_ids)
        for s, rows in zip(refs, self._get(list(refs.values())), strict=True):
            for i, row in zip(by_shard[s], rows, strict=True):
                out[i] = row
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.shards.shutdown()
        if self._owns_embedder:
            ray.kill(self.embedder)


def start_shards(
    index_dir: Path,
    num_shards: int,
    cfg: IndexSection,
    cpus_per_shard: float,
    shard_threads: int = 1,
    restarts: int = 0,
) -> tuple[list, list[int]]:
    """One RetrievalShard actor per shard, loaded and ready: (actors, their sizes)."""
    from actors.retrieval_shard import RetrievalShard
    from cluster.actor_group import ActorGroup

    # A crashed shard reloads from disk; the calls in flight are retried. Shard s holds its
    # own part of the index, so the group is fanned out to, never leased from.
    shards = ActorGroup.create(
        "shard", RetrievalShard, RoleResources(count=num_shards, cpus=cpus_per_shard), restarts,
        lambda s: (str(index_dir), s, cfg.nprobe, shard_threads, cfg.rerank_factor),
    )  # fmt: skip
    return shards, Retriever._get([a.ready.remote() for a in shards])


def _merge(
    lists: list[list[tuple[str, str, float]]], exclude: str | None, k: int, asked: int
) -> tuple[list[Hit], bool]:
    """Top-k of the shards' lists minus `exclude`'s chunks, and whether it is provably final.

    Final when every shard either returned fewer than asked (nothing more there) or its worst
    returned score is no better than the k-th merged hit (nothing it holds back can enter).
    """
    merged = sorted(
        (Hit(c, d, s) for rows in lists for c, d, s in rows if d != exclude),
        key=lambda h: (-h.score, h.chunk_id),
    )[:k]
    if len(merged) < k:
        return merged, all(len(rows) < asked for rows in lists)
    kth = merged[-1].score
    return merged, all(len(rows) < asked or rows[-1][2] <= kth for rows in lists)


def candidates_for(retriever: Retriever, screened: list[ScreenedDoc]) -> list[list[Candidate]]:
    """Step 2 for a batch of screened documents: the top-k chunks for every selected position
    (one search and one chunk fetch for the whole batch). Per document one Candidate per
    distinct chunk, with the positions it was retrieved for and its best similarity."""
    queries = [q for doc in screened for q in doc.queries]
    owners = [doc.doc_id for doc in screened for _ in doc.queries]
    hits = iter(retriever.search(queries, owners) if queries else [])
    per_doc: list[dict[str, Candidate]] = []
    for doc in screened:
        merged: dict[str, Candidate] = {}
        for pos in doc.positions:
            for h in next(hits):
                c = merged.setdefault(h.chunk_id, Candidate(h.chunk_id, [], -1.0))
                c.similarity = max(c.similarity, h.score)
                c.positions.append(pos)
        per_doc.append(merged)
    wanted = sorted({cid for merged in per_doc for cid in merged})
    tokens = {c["chunk_id"]: c["input_ids"] for c in retriever.get_chunks(wanted)}
    for merged in per_doc:
        for cid, c in merged.items():
            c.input_ids = tokens[cid]
    return [list(merged.values()) for merged in per_doc]


def meta_chunk_hits(
    retriever: Retriever, doc: dict, tokenizer, max_chars: int, seq_len: int
) -> tuple[list, list[list[Candidate]], int]:
    """NExtLong's retrieval (pipelines/steps/assemble_nextlong.py): the document's meta-chunks, per
    meta-chunk its most similar chunks of other documents (most similar first, enough to pick
    k unused ones), and k."""
    from pipelines.steps.assemble_nextlong import meta_chunks, negatives_per_meta_chunk

    ids = doc["input_ids"]
    metas = meta_chunks(tokenizer.batch_decode([[t] for t in ids]), max_chars)
    chars = sum(len(m.text) for m in metas)
    k = negatives_per_meta_chunk(seq_len, chars, len(ids), len(metas), max_chars)
    # A meta-chunk may lose up to (its index) x k hits to earlier ones: ask for enough.
    hits = retriever.search([m.text for m in metas], [doc["doc_id"]] * len(metas), k * 2 + 2)
    wanted = list(dict.fromkeys(h.chunk_id for q in hits for h in q))
    rows = dict(zip(wanted, retriever.get_chunks(wanted), strict=True))
    per_meta = [
        [Candidate(h.chunk_id, rows[h.chunk_id]["input_ids"], h.score) for h in q] for q in hits
    ]
    return metas, per_meta, k
