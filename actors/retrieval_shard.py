"""RetrievalShard: one Ray actor per index shard, answering batched top-k inner-product queries.

It loads its FAISS index and its chunk table (row i of the table is FAISS id i) once, checks them
against the manifest, and then serves `search` (ids and scores only, small replies),
`get_chunks` (text and token ids, for the assembler) and `sample_fillers` (random chunks of its
own part, for the assembler's filler) for as long as the run lasts.

IVF-PQ shards built with `index.rerank_factor` > 0 re-rank: FAISS returns rerank_factor x k
candidates by their PQ scores, and those are scored again by exact inner product against the
shard's float32 vectors, mapped from disk (np.memmap), so RAM holds only the PQ codes and
the k' rows a query touches come through the page cache (`Reranked`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipelines.core.errors import UserError

Result = tuple[str, str, float]  # (chunk_id, doc_id, score)
RERANK_QUERY_BLOCK = 64  # queries re-ranked at once: bounds the gathered (q, k', dim) block


def set_nprobe(index, nprobe: int) -> None:
    """nprobe of an IVF index, also when wrapped (OPQ's IndexPreTransform); no-op for flat."""
    import faiss

    try:
        faiss.extract_index_ivf(index).nprobe = nprobe
    except RuntimeError:  # not an IVF index
        pass


def exact_rerank(
    queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each query's candidate ids by exact inner product with `vectors` (an array or
    memmap, row = id); (scores, ids) shaped like FAISS's answer, id -1 / score -inf for none."""
    out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_i = np.full((len(queries), k), -1, dtype=np.int64)
    for lo in range(0, len(queries), RERANK_QUERY_BLOCK):
        q, cand = queries[lo : lo + RERANK_QUERY_BLOCK], ids[lo : lo + RERANK_QUERY_BLOCK]
        valid = cand >= 0
        # Read each wanted row once, in file order (sequential reads where rows are close).
        rows, where = np.unique(np.where(valid, cand, 0), return_inverse=True)
        block = np.asarray(vectors[rows], dtype=np.float32)[where.reshape(cand.shape)]
        scores = np.einsum("qkd,qd->qk", block, q)
        scores[~valid] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top_s = np.take_along_axis(scores, top, axis=1)
        top_i = np.where(np.isfinite(top_s), np.take_along_axis(cand, top, axis=1), -1)
        out_s[lo : lo + len(q), : top.shape[1]] = top_s
        out_i[lo : lo + len(q), : top.shape[1]] = top_i
    return out_s, out_i


class Reranked:
    """A FAISS index whose answers are re-ranked: `factor` x k candidates by its own (PQ)
    scores, then the best k of them by exact inner product against `vectors` (row = id)."""

    def __init__(self, index, vectors: np.ndarray, factor: int):
        if len(vectors) != index.ntotal:
            raise ValueError(f"{len(vectors)} float vectors for {index.ntotal} indexed ones")
        self.index, self.vectors, self.factor = index, vectors, factor
        self.ntotal = index.ntotal

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        shortlist = min(self.ntotal, self.factor * k)
        _, ids = self.index.search(queries, shortlist)
        return exact_rerank(queries, ids, self.vectors, k)


class ShardIndex:
    """The in-process part of a shard (usable without Ray, e.g. in the benchmark)."""

    def __init__(
        self,
        index_dir: str | Path,
        shard: int,
        nprobe: int = 16,
        threads: int = 1,
        rerank_factor: int = 0,
    ):
        import faiss

        from pipelines.core.index_format import read_chunk_table, read_manifest, rebuild_hint

        index_dir = Path(index_dir)
        meta = read_manifest(index_dir)["shards"][shard]
        faiss.omp_set_num_threads(max(1, threads))
        index_path = index_dir / meta["index_file"]
        try:
            self.index = faiss.read_index(str(index_path))
        except RuntimeError:
            raise UserError(
                f"index file '{index_path}' cannot be read by FAISS: {rebuild_hint(index_dir)}"
            ) from None
        if self.index.ntotal != meta["n_vectors"]:
            raise UserError(
                f"index file '{index_path}' holds {self.index.ntotal} vectors, the manifest says "
                f"{meta['n_vectors']}: {rebuild_hint(index_dir)}"
            )
        set_nprobe(self.index, nprobe)
        self.searcher = self.index
        if rerank_factor and meta["index_type"] == "ivf_pq":
            if not meta.get("vectors_file"):
                raise UserError(
                    f"index.rerank_factor = {rerank_factor} needs the float vectors on disk, but "
                    f"shard {shard} of '{index_dir}' was built without them: set "
                    f"index.rerank_factor: 0, or {rebuild_hint(index_dir)}"
                )
            vectors = np.load(index_dir / meta["vectors_file"], mmap_mode="r")
            if vectors.shape != (self.index.ntotal, self.index.d):
                raise UserError(
                    f"vector file '{index_dir / meta['vectors_file']}' is {vectors.shape}, the "
                    f"index holds {self.index.ntotal} x {self.index.d}: {rebuild_hint(index_dir)}"
                )
            self.searcher = Reranked(self.index, vectors, rerank_factor)
        self.chunks = read_chunk_table(index_dir / meta["chunks_file"])
        if self.chunks.num_rows != self.index.ntotal:
            raise UserError(
                f"chunk table '{index_dir / meta['chunks_file']}' has {self.chunks.num_rows} rows "
                f"for {self.index.ntotal} vectors: {rebuild_hint(index_dir)}"
            )
        self.chunk_ids = np.array(self.chunks["chunk_id"].to_pylist(), dtype=object)
        self.doc_ids = np.array(self.chunks["doc_id"].to_pylist(), dtype=object)
        self.row_of = {c: i for i, c in enumerate(self.chunk_ids)}
        self.shard = shard

    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, query_vectors: np.ndarray, k: int) -> list[list[Result]]:
        """Per query, up to k (chunk_id, doc_id, score), best first."""
        q = np.ascontiguousarray(query_vectors, dtype=np.float32)
        k = min(k, self.size())
        if k == 0 or len(q) == 0:
            return [[] for _ in range(len(q))]
        scores, ids = self.searcher.search(q, k)
        return [
            [
                (self.chunk_ids[i], self.doc_ids[i], float(s))
                for i, s in zip(row_ids, row_scores, strict=True)
                if i >= 0  # IVF returns -1 when the probed lists hold fewer than k vectors
            ]
            for row_ids, row_scores in zip(ids, scores, strict=True)
        ]

    def get_chunks(self, chunk_ids: list[str]) -> list[dict]:
        """Chunk rows (all CHUNK_SCHEMA columns) in the order asked; KeyError names a stranger."""
        missing = [c for c in chunk_ids if c not in self.row_of]
        if missing:
            raise KeyError(f"chunk '{missing[0]}' is not in shard {self.shard}")
        rows = self.chunks.take([self.row_of[c] for c in chunk_ids])
        return rows.to_pylist()

    def sample_fillers(self, n: int, seed: int, exclude_doc_id: str | None) -> list[tuple]:
        """n random chunks of this shard (with replacement), none of document exclude_doc_id:
        [(chunk_id, input_ids)], the same for the same seed. Fewer only when this shard holds
        no other document's chunk."""
        rng = np.random.default_rng(seed)
        out: list[tuple] = []
        tokens = self.chunks["input_ids"]
        while len(out) < n:
            rows = rng.integers(self.size(), size=n - len(out))
            keep = [int(r) for r in rows if self.doc_ids[r] != exclude_doc_id]
            if not keep and all(d == exclude_doc_id for d in self.doc_ids):
                break
            out += [(self.chunk_ids[r], tokens[r].as_py()) for r in keep]
        return out


class RetrievalShard:
    """Ray actor around ShardIndex; start one per shard with num_cpus=resources.shard.cpus."""

    def __init__(
        self, index_dir: str, shard: int, nprobe: int = 16, threads: int = 1, rerank: int = 0
    ):
        self.shard = ShardIndex(index_dir, shard, nprobe, threads, rerank)

    def ready(self) -> int:
        return self.shard.size()

    def search(self, query_vectors: np.ndarray, k: int) -> list[list[Result]]:
        return self.shard.search(query_vectors, k)

    def get_chunks(self, chunk_ids: list[str]) -> list[dict]:
        return self.shard.get_chunks(chunk_ids)

    def sample_fillers(self, n: int, seed: int, exclude_doc_id: str | None) -> list[tuple]:
        return self.shard.sample_fillers(n, seed, exclude_doc_id)

    def pid(self) -> int:
        """The actor's process (a restart after a crash gives a new one)."""
        return os.getpid()
