"""Build the sharded, persisted retrieval index: chunk -> embed -> one FAISS index per shard.

Layout of the index directory (every file listed with its sha256 in the manifest):

    manifest.json              embedder, dim, shards (sizes, index types), checksums, build key
    shard-00000.faiss          FAISS index of shard 0 (IndexFlatIP, IVF-Flat or [OPQ+]IVF-PQ,
                               inner product)
    shard-00000.chunks.parquet its chunk rows (core/index_format.py CHUNK_SCHEMA); row i = FAISS id
    i
    shard-00000.vectors.npy    IVF-PQ shards with index.rerank_factor > 0 only: the float32
                               vectors (row i = FAISS id i), read by memmap to re-rank PQ hits
    ...

The build key hashes everything the result depends on (the documents, the tokenizer files, the
build-relevant `index.*` keys): an index whose key matches and whose checksums verify is reused,
a different key rebuilds, and a matching key with a damaged file is a UserError (the user should
know their index got corrupted rather than silently pay for a rebuild). Building happens in a
temporary directory renamed into place at the end, so a failed build never damages an old index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from actors.embedder import embedder_threads, resolve_dtype
from pipelines.core.config import IndexSection
from pipelines.core.errors import UserError
from pipelines.core.index_format import (
    FORMAT_VERSION,
    MANIFEST,
    read_manifest,
    sha256_file,
    shard_files,
    vectors_file,
    verify_index,
    write_chunk_table,
)
from pipelines.world.chunking import chunk_corpus, shard_of
from pipelines.world.ingest import read_docs

log = logging.getLogger(__name__)
# Keys that change what is built; query-time keys (nprobe, top_k, margins) do not force a rebuild.
BUILD_KEYS = (
    "chunk_tokens",
    "min_chunk_tokens",
    "source_split",
    "embedder",
    "num_shards",
    "flat_max_vectors",
    "ivf_nlist",
    "ivf_min_points_per_list",
    "ivf_train_max_vectors",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
)


@dataclass
class IndexBuild:
    index_dir: Path
    manifest: dict
    reused: bool


def build_config(cfg: IndexSection) -> dict:
    config = {k: getattr(cfg, k) for k in BUILD_KEYS}
    # Only when set: indexes built before these keys existed keep their key.
    if cfg.pq_bytes:
        config["pq_bytes"] = cfg.pq_bytes
        if cfg.opq:
            config["opq"] = True
        if cfg.rerank_factor:  # on/off only: the factor itself is a query-time key
            config["rerank_vectors"] = True
    return config


def build_key(doc_ids: list[str], tokenizer_dir: Path, cfg: IndexSection, dtype: str = "") -> str:
    """dtype: the embedding dtype resolved on this machine (default: what "auto" resolves to)."""
    h = hashlib.sha256(f"v{FORMAT_VERSION}".encode())
    h.update(json.dumps(build_config(cfg), sort_keys=True).encode())
    if (dtype or resolve_dtype("auto")) != "float32":  # float32 builds keep their earlier keys
        h.update(f"embed_dtype={dtype or resolve_dtype('auto')}".encode())
    h.update("\n".join(doc_ids).encode())  # doc ids are content hashes of the documents
    for name in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / name).is_file():
            h.update(name.encode() + sha256_file(Path(tokenizer_dir) / name).encode())
    return h.hexdigest()[:16]


def make_faiss_index(vectors: np.ndarray, cfg: IndexSection, seed: int):
    """Exact inner-product search for small shards, IVF-Flat (trained quantizer) above, or
    IVF-PQ (index.pq_bytes bytes per vector, after an OPQ rotation with index.opq) for pools
    too large to hold as floats."""
    import faiss

    n, dim = vectors.shape
    if n <= cfg.flat_max_vectors:
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index, {"index_type": "flat"}
    nlist = max(1, min(cfg.ivf_nlist, n // cfg.ivf_min_points_per_list))
    if cfg.pq_bytes and dim % cfg.pq_bytes:
        raise UserError(
            f"index.pq_bytes = {cfg.pq_bytes} must divide the embedding dimension {dim}"
        )
    if cfg.opq and not cfg.pq_bytes:
        raise UserError("index.opq rotates vectors for PQ codes: it needs index.pq_bytes > 0")
    # "np": no polysemous training (a Hamming-filter order we never use; 20x the build time)
    codes = f"PQ{cfg.pq_bytes}x8np" if cfg.pq_bytes else "Flat"
    # OPQ{m}: an orthogonal rotation (inner products unchanged) learnt so that each of the m
    # sub-vectors carries a fair share of the variance before it is quantized to one byte.
    rotation = f"OPQ{cfg.pq_bytes}," if cfg.opq else ""
    index = faiss.index_factory(dim, f"{rotation}IVF{nlist},{codes}", faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.spherical = True  # unit-norm centroids: assignment by inner product is then fair
    ivf.cp.seed = seed
    train = vectors
    if n > cfg.ivf_train_max_vectors:
        rows = np.random.default_rng(seed).choice(n, cfg.ivf_train_max_vectors, replace=False)
        train = vectors[np.sort(rows)]
    index.train(train)
    index.add(vectors)
    if cfg.pq_bytes:
        info = {"index_type": "ivf_pq", "nlist": nlist, "pq_bytes": cfg.pq_bytes}
        return index, info | ({"opq": True} if cfg.opq else {})
    return index, {"index_type": "ivf", "nlist": nlist}


def build_cpus(share: float, wait_s: float = 3.0) -> float:
    """CPUs each embedding task of the build reserves (its torch threads follow). On one node the
    index is built before any of the run's actors start: the build takes every CPU then free
    (at least `share`); 1 of 2 cores left half the machine idle for minutes. On a cluster the
    configured share stays (index.embed_actors tasks of resources.embedder.cpus each)."""
    import ray

    if len([n for n in ray.nodes() if n.get("Alive")]) != 1:
        return share
    total, free = ray.cluster_resources().get("CPU", 0.0), 0.0
    deadline = time.monotonic() + wait_s  # the chunking tasks' CPUs return within ~0.5 s
    while free < total and time.monotonic() < deadline:
        free = max(free, ray.available_resources().get("CPU", 0.0))
        time.sleep(0.1)
    return max(share, float(int(free)))


def embed_chunks(
    chunks: pa.Table, cfg: IndexSection, cpus: float = 1.0, dtype: str = "auto"
) -> np.ndarray:
    """(n_chunks, dim) float32 unit vectors in chunk-table row order, via Ray Data tasks."""
    import ray

    from actors.embedder import embed_batch

    # Blocks of one embedding batch: tasks spread over the cluster and the bar moves per batch.
    step = cfg.embed_batch_size
    table = chunks.select(["chunk_id", "text"])
    blocks = [table.slice(i, step) for i in range(0, table.num_rows, step)] or [table]
    ds = ray.data.from_arrow(blocks).map_batches(
        embed_batch,
        fn_kwargs={
            "name": cfg.embedder,
            "batch_size": cfg.embed_batch_size,
            "threads": embedder_threads(cpus),
            "dtype": resolve_dtype(dtype),
        },
        batch_format="pyarrow",
        batch_size=cfg.embed_batch_size,
        compute=ray.data.TaskPoolStrategy(size=cfg.embed_actors),
        num_cpus=cpus,
        # What a MiniLM worker holds (torch + model; 0.65-0.67 GiB measured). Unasked, Ray Data
        # warns every 30 s of a build on a small CPU share that it may run out of memory.
        memory=1 << 30,
    )
    row_of = {cid: i for i, cid in enumerate(chunks["chunk_id"].to_pylist())}
    vectors: np.ndarray | None = None
    with tqdm(total=chunks.num_rows, desc="embed chunks", unit="chunk") as bar:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            emb = batch["embedding"].combine_chunks()
            block = emb.flatten().to_numpy().reshape(len(emb), emb.type.list_size)
            if vectors is None:
                vectors = np.empty((chunks.num_rows, block.shape[1]), dtype=np.float32)
            # Rows may arrive in any order: place them by chunk id.
            vectors[[row_of[c] for c in batch["chunk_id"].to_pylist()]] = block
            bar.update(len(block))
    assert vectors is not None
    return vectors


def _write_index(tmp: Path, chunks: pa.Table, vectors: np.ndarray, cfg: IndexSection, seed: int):
    import faiss

    shard_ids = np.array([shard_of(c, cfg.num_shards) for c in chunks["chunk_id"].to_pylist()])
    shards, files = [], {}
    for shard in tqdm(range(cfg.num_shards), desc="build shards", unit="shard"):
        rows = np.flatnonzero(shard_ids == shard)
        index_name, chunks_name = shard_files(shard)
        shard_vectors = np.ascontiguousarray(vectors[rows])
        index, info = make_faiss_index(shard_vectors, cfg, seed + shard)
        faiss.write_index(index, str(tmp / index_name))
        write_chunk_table(chunks.take(pa.array(rows, type=pa.int64())), tmp / chunks_name)
        names = [index_name, chunks_name]
        if info["index_type"] == "ivf_pq" and cfg.rerank_factor:
            # The floats stay on disk for re-ranking (ShardIndex maps them, never loads them).
            info["vectors_file"] = vectors_file(shard)
            np.save(tmp / info["vectors_file"], shard_vectors)
            names.append(info["vectors_file"])
        shards.append(
            {
                "shard": shard,
                "n_vectors": len(rows),
                "index_file": index_name,
                "chunks_file": chunks_name,
                **info,
            }  # fmt: skip
        )
        for name in names:
            files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
    return shards, files


def index_docs(corpus_dir: Path, cfg: IndexSection):
    """The documents that become retrievable chunks (Arrow table, doc_id order)."""
    docs = read_docs(corpus_dir, None if cfg.source_split == "all" else cfg.source_split)
    if cfg.max_docs:  # a deterministic subset (docs are in doc_id order) for quick runs
        docs = docs.slice(0, cfg.max_docs)
    return docs


def cached_index_dir(
    index: IndexSection, cache_dir: str | Path, corpus_dir: Path, tokenizer_dir: Path
) -> Path:
    """Where the index of these inputs lives: the content-addressed cache (run.cache_dir), so
    every run and command over the same corpus, tokenizer and index config shares one build
    (embedding is the slowest part of a small run)."""
    doc_ids = index_docs(corpus_dir, index)["doc_id"].to_pylist()
    return Path(cache_dir) / f"index-{build_key(doc_ids, tokenizer_dir, index)}"


def build_index(
    index_dir: Path,
    corpus_dir: Path,
    tokenizer_dir: Path,
    cfg: IndexSection,
    seed: int = 0,
    embedder_cpus: float = 1.0,
    embed_dtype: str = "auto",
) -> IndexBuild:
    """Build (or reuse) the index of `corpus_dir` chunked with the tokenizer in `tokenizer_dir`.
    Each of the index.embed_actors concurrent embedding tasks reserves build_cpus(embedder_cpus);
    embed_dtype "auto" embeds in bfloat16 where the CPU does it natively (actors/embedder.py)."""
    index_dir, tokenizer_dir = Path(index_dir), Path(tokenizer_dir)
    docs = index_docs(corpus_dir, cfg)
    dtype = resolve_dtype(embed_dtype)
    key = build_key(docs["doc_id"].to_pylist(), tokenizer_dir, cfg, dtype)
    if index_dir.exists():
        old = read_manifest(index_dir)
        if old.get("build_key") == key:
            verify_index(index_dir)
            log.info("index: reusing %s (build key %s)", index_dir, key)
            return IndexBuild(index_dir, old, reused=True)
        log.info(
            "index: inputs or config changed (%s -> %s), rebuilding", old.get("build_key"), key
        )
    if docs.num_rows == 0:
        raise UserError(f"corpus '{corpus_dir}' has no '{cfg.source_split}' documents to index")
    start = time.perf_counter()
    cpus = build_cpus(embedder_cpus)
    chunks, vectors, timings = _chunk_and_embed(docs, corpus_dir, tokenizer_dir, cfg, cpus, dtype)
    tmp = index_dir.with_name(f"{index_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        shards, files = _write_index(tmp, chunks, vectors, cfg, seed)
        manifest = _manifest(key, cfg, chunks, docs.num_rows, vectors, shards, files)
        manifest |= {
            "embed_dtype": dtype,
            "embed_cpus": cpus,
            "corpus_dir": str(corpus_dir),
            "tokenizer_dir": str(tokenizer_dir),
            "build_s": round(time.perf_counter() - start, 2),
            "timings": timings,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _swap_into_place(tmp, index_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("index: %d chunks in %d shards -> %s", chunks.num_rows, cfg.num_shards, index_dir)
    return IndexBuild(index_dir, manifest, reused=False)


def _chunk_and_embed(docs, corpus_dir, tokenizer_dir: Path, cfg: IndexSection, cpus, dtype):
    """The documents' chunks, their vectors, and the seconds each took."""
    start = time.perf_counter()
    chunks = chunk_corpus(docs, tokenizer_dir, cfg.chunk_tokens, cfg.min_chunk_tokens)
    if chunks.num_rows == 0:
        raise UserError(
            f"no chunks from corpus '{corpus_dir}': lower index.min_chunk_tokens "
            f"(now {cfg.min_chunk_tokens})"
        )
    timings = {"chunk_s": round(time.perf_counter() - start, 2)}
    log.info(
        "index: %d chunks from %d documents, embedding on %g CPUs in %s",
        chunks.num_rows, docs.num_rows, cpus, dtype,
    )  # fmt: skip
    vectors = embed_chunks(chunks, cfg, cpus, dtype)
    timings["embed_s"] = round(time.perf_counter() - start - timings["chunk_s"], 2)
    return chunks, vectors, timings


def _manifest(key, cfg: IndexSection, chunks, n_docs: int, vectors, shards, files) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "build_key": key,
        "embedder": cfg.embedder,
        "dim": int(vectors.shape[1]),
        "metric": "inner_product",
        "normalized": True,
        "n_chunks": chunks.num_rows,
        "n_docs": n_docs,
        "num_shards": cfg.num_shards,
        "shards": shards,
        "files": files,
        "chunk_tables": [s["chunks_file"] for s in shards],
        "index_config": build_config(cfg),
        "config_fingerprint": hashlib.sha256(
            json.dumps(build_config(cfg), sort_keys=True).encode()
        ).hexdigest()[:12],
    }


def _swap_into_place(tmp: Path, index_dir: Path) -> None:
    """Replace index_dir by tmp; the old index is removed only once the new one is in place."""
    old = index_dir.with_name(f"{index_dir.name}.old-{os.getpid()}")
    if index_dir.exists():
        index_dir.replace(old)
    tmp.replace(index_dir)
    shutil.rmtree(old, ignore_errors=True)
