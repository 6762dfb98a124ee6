"""RetrievalShard: one Ray actor per index shard, answering batched top-k inner-product queries.

It loads its FAISS index and its chunk table (row i of the table is FAISS id i) once, checks them
against the manifest, and then serves `search` (ids and scores only, small replies) and
`get_chunks` (text and token ids, for the assembler) for as long as the run lasts.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import ray

from pipelines.errors import UserError

Result = tuple[str, str, float]  # (chunk_id, doc_id, score)


class ShardIndex:
    """The in-process part of a shard (usable without Ray, e.g. in the benchmark)."""

    def __init__(self, index_dir: str | Path, shard: int, nprobe: int = 16, threads: int = 1):
        import faiss

        from pipelines.chunking import read_chunk_table
        from pipelines.index_format import read_manifest, rebuild_hint

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
        if hasattr(self.index, "nprobe"):
            self.index.nprobe = nprobe
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
        scores, ids = self.index.search(q, k)
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


@ray.remote
class RetrievalShard:
    """Ray actor around ShardIndex; start one per shard with num_cpus=resources.shard.cpus."""

    def __init__(self, index_dir: str, shard: int, nprobe: int = 16, threads: int = 1):
        self.shard = ShardIndex(index_dir, shard, nprobe, threads)

    def ready(self) -> int:
        return self.shard.size()

    def search(self, query_vectors: np.ndarray, k: int) -> list[list[Result]]:
        return self.shard.search(query_vectors, k)

    def get_chunks(self, chunk_ids: list[str]) -> list[dict]:
        return self.shard.get_chunks(chunk_ids)

    def pid(self) -> int:
        """The actor's process (a restart after a crash gives a new one)."""
        return os.getpid()
