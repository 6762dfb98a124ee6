"""Retrieval chunks: each document cut into windows of `index.chunk_tokens` policy tokens.

Chunks are token-exact: a document's token ids are split at fixed offsets, so the chunks' ids
concatenate back to the document's ids (the assembler places chunks into training sequences by
their token ids, never by re-tokenizing text). A trailing partial chunk is kept when it has at
least `index.min_chunk_tokens` tokens. The chunk id hashes the document id, the ordinal and the
token ids, so it is stable across runs and changes whenever the content does (another tokenizer
or chunk size gives other ids). Each chunk goes to a shard by its id, so the assignment is
deterministic and a client can find a chunk's shard from its id alone.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines.core.index_format import CHUNK_SCHEMA


def chunk_id_of(doc_id: str, ordinal: int, token_ids: np.ndarray) -> str:
    h = hashlib.sha256(f"{doc_id}:{ordinal}:".encode())
    h.update(np.asarray(token_ids, dtype="<i4").tobytes())
    return h.hexdigest()[:20]


def shard_of(chunk_id: str, num_shards: int) -> int:
    """Deterministic shard of a chunk, computable from the id alone."""
    return int(chunk_id[:8], 16) % num_shards


def split_tokens(n_tokens: int, chunk_tokens: int, min_chunk_tokens: int) -> list[tuple[int, int]]:
    """[start, end) token spans of one document's chunks."""
    spans = [(s, min(s + chunk_tokens, n_tokens)) for s in range(0, n_tokens, chunk_tokens)]
    if spans and spans[-1][1] - spans[-1][0] < min(min_chunk_tokens, chunk_tokens):
        spans.pop()
    return spans


def tokenize_documents(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids exactly as the policy sees the document (no special tokens added)."""
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def chunk_documents(
    doc_ids: list[str],
    texts: list[str],
    tokenizer,
    chunk_tokens: int,
    min_chunk_tokens: int,
) -> pa.Table:
    """Chunk rows (CHUNK_SCHEMA) of the given documents, in document order then ordinal."""
    cols: dict[str, list] = {name: [] for name in CHUNK_SCHEMA.names}
    for doc_id, ids in zip(doc_ids, tokenize_documents(tokenizer, texts), strict=True):
        ids = np.asarray(ids, dtype=np.int32)
        for ordinal, (start, end) in enumerate(
            split_tokens(len(ids), chunk_tokens, min_chunk_tokens)
        ):
            piece = ids[start:end]
            cols["chunk_id"].append(chunk_id_of(doc_id, ordinal, piece))
            cols["doc_id"].append(doc_id)
            cols["ordinal"].append(ordinal)
            cols["start_token"].append(start)
            cols["n_tokens"].append(end - start)
            cols["text"].append(tokenizer.decode(piece.tolist()))
            cols["input_ids"].append(piece)
    return pa.table(cols, schema=CHUNK_SCHEMA)


@functools.lru_cache(maxsize=4)
def _tokenizer(tokenizer_dir: str):
    """The tokenizer, loaded once per Ray worker process (tasks reuse their worker)."""
    from pipelines.world.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)


def _chunk_batch(
    batch: pa.Table, tokenizer_dir: str, chunk_tokens: int, min_chunk_tokens: int
) -> pa.Table:
    """Ray Data task: the chunks of a batch of documents (doc_id, text columns)."""
    tokenizer = _tokenizer(tokenizer_dir)
    doc_ids, texts = batch["doc_id"].to_pylist(), batch["text"].to_pylist()
    return chunk_documents(doc_ids, texts, tokenizer, chunk_tokens, min_chunk_tokens)


def chunk_corpus(
    docs: pa.Table,
    tokenizer_dir: str | Path,
    chunk_tokens: int,
    min_chunk_tokens: int,
    batch_docs: int = 64,
    workers: int = 1,
) -> pa.Table:
    """All chunks of `docs` (doc_id, text columns), tokenized in parallel with Ray Data.

    The result is sorted by (doc_id, ordinal), so it does not depend on how work was scheduled.
    Tasks, not an actor pool: Ray Data hands a pool's actors their constructor arguments through
    the object store with max_restarts -1, which Ray reports at ERROR level in every run
    (ray-project/ray#57733); a failed task is simply retried.
    """
    import ray

    blocks = [
        docs.select(["doc_id", "text"]).slice(i, batch_docs)
        for i in range(0, len(docs), batch_docs)
    ]
    chunks = ray.data.from_arrow(blocks or [docs.select(["doc_id", "text"])]).map_batches(
        _chunk_batch,
        fn_kwargs={
            "tokenizer_dir": str(tokenizer_dir),
            "chunk_tokens": chunk_tokens,
            "min_chunk_tokens": min_chunk_tokens,
        },
        batch_format="pyarrow",
        batch_size=batch_docs,
        compute=ray.data.TaskPoolStrategy(size=workers),
    )
    tables = list(chunks.iter_batches(batch_format="pyarrow", batch_size=None))
    table = pa.concat_tables(tables).cast(CHUNK_SCHEMA) if tables else CHUNK_SCHEMA.empty_table()
    return table.sort_by([("doc_id", "ascending"), ("ordinal", "ascending")])
