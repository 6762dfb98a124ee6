"""The on-disk format of a retrieval index, readable without the code that builds it.

    manifest.json              format_version, embedder, dim, shards, files (bytes + sha256)
    shard-00000.faiss          FAISS index of shard 0; FAISS id i = row i of its chunk table
    shard-00000.chunks.parquet its chunk rows (CHUNK_SCHEMA below)
    shard-00000.vectors.npy    optional (IVF-PQ shards built with index.rerank_factor > 0): the
                               float32 vectors, row i = FAISS id i; the manifest's shard entry
                               names it as "vectors_file" (indexes without it still load)

Readers (the retrieval shards, the retriever) check the manifest and the checksums here; the
builder (pipelines/world/build_index.py) writes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.errors import UserError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# One row per chunk of a shard's chunk table; row i is FAISS id i of that shard.
CHUNK_SCHEMA = pa.schema(
    [
        ("chunk_id", pa.string()),
        ("doc_id", pa.string()),
        ("ordinal", pa.int32()),  # position of the chunk in its document
        ("start_token", pa.int32()),  # offset of its first token in the document's token ids
        ("n_tokens", pa.int32()),
        ("text", pa.string()),  # decoded token ids: what is embedded
        ("input_ids", pa.list_(pa.int32())),
    ]
)


def write_chunk_table(table: pa.Table, path: Path) -> None:
    pq.write_table(table.cast(CHUNK_SCHEMA), path)


def read_chunk_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(path, columns=columns, schema=CHUNK_SCHEMA)


def rebuild_hint(index_dir: Path) -> str:
    return f"delete '{index_dir}' and run `policylong build-index` to rebuild it"


def shard_files(shard: int) -> tuple[str, str]:
    return f"shard-{shard:05d}.faiss", f"shard-{shard:05d}.chunks.parquet"


def vectors_file(shard: int) -> str:
    return f"shard-{shard:05d}.vectors.npy"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(index_dir: Path) -> dict:
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"no index manifest at '{path}': {rebuild_hint(index_dir)}")
    try:
        manifest = json.loads(path.read_text())
        manifest["shards"], manifest["files"]  # noqa: B018 - the keys every reader needs
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(
            f"index manifest '{path}' is unreadable: {rebuild_hint(index_dir)}"
        ) from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"index '{index_dir}' has format {manifest.get('format_version')}, this code reads "
            f"{FORMAT_VERSION}: {rebuild_hint(index_dir)}"
        )
    return manifest


def verify_index(index_dir: Path) -> dict:
    """The manifest, after checking every listed file's size and sha256; UserError if not."""
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    for name, meta in manifest["files"].items():
        path = index_dir / name
        if not path.is_file():
            raise UserError(f"index file '{path}' is missing: {rebuild_hint(index_dir)}")
        size = path.stat().st_size
        if size != meta["bytes"]:
            raise UserError(
                f"index file '{path}' is corrupt ({size} bytes, manifest says {meta['bytes']}; "
                f"truncated or overwritten): {rebuild_hint(index_dir)}"
            )
        if sha256_file(path) != meta["sha256"]:
            raise UserError(
                f"index file '{path}' is corrupt (sha256 differs from the manifest): "
                f"{rebuild_hint(index_dir)}"
            )
    return manifest


def chunk_column(index_dir: Path, column: str) -> dict:
    """chunk_id -> one column of the index's chunk tables (e.g. input_ids, doc_id)."""
    import pyarrow.parquet as pq

    out: dict = {}
    for table in read_manifest(Path(index_dir))["chunk_tables"]:
        cols = pq.read_table(Path(index_dir) / table, columns=["chunk_id", column]).to_pydict()
        out.update(zip(cols["chunk_id"], cols[column], strict=True))
    return out
