"""Retrieval end to end: real Ray actors, real FAISS files, real all-MiniLM-L6-v2 embeddings.

The index is built once per session by the real `policylong build-index` command (the slow part:
embedding every chunk); the CLI test runs the same command again and must find it up to date.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from actors.retrieval_shard import Reranked, ShardIndex, set_nprobe
from pipelines.core.config import IndexSection, load_config
from pipelines.core.errors import UserError
from pipelines.core.index_format import verify_index
from pipelines.driver.workers import retriever_for
from pipelines.steps.retrieve import Retriever
from pipelines.world.build_index import (
    IndexBuild,
    build_index,
    build_key,
    cached_index_dir,
    make_faiss_index,
)
from pipelines.world.ingest import read_docs

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
INDEXED_DOCS = 80


@pytest.fixture(scope="module")
def index_run(test_config, tiny_world, tmp_path_factory):
    """`policylong build-index` on a slice of the test world's documents, with its policy.

    Embedding the whole corpus takes minutes on 2 cores, so the run gets a corpus of the first
    INDEXED_DOCS training documents (as .jsonl) and the tiny world's model via model.path.
    """
    from pipelines.cli import main

    root = tmp_path_factory.mktemp("index_run")
    source = root / "docs"
    source.mkdir()
    docs = read_docs(tiny_world.corpus_dir, "train").slice(0, INDEXED_DOCS)
    lines = [json.dumps({"text": t}) for t in docs["text"].to_pylist()]
    (source / "docs.jsonl").write_text("\n".join(lines) + "\n")
    overrides = {
        "run.output_dir": root / "runs",
        # a cache of its own: the build runs in every test run, not only on a fresh clone
        "run.cache_dir": root / "cache",
        "corpus.source": source,
        "model.path": tiny_world.model_dir,
    }
    argv = ["build-index", "--config", str(REPO / "configs" / "test.yaml")]
    for key, value in overrides.items():
        argv += ["--set", f"{key}={value}"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    assert json.loads(out.getvalue().strip().splitlines()[-1])["reused"] is False  # built here
    cfg = load_config(REPO / "configs" / "test.yaml", [f"{k}={v}" for k, v in overrides.items()])
    return argv, cfg


@pytest.fixture(scope="module")
def built_index(index_run, tiny_world):
    _, cfg = index_run
    index_dir = cached_index_dir(
        cfg.index, cfg.run.cache_dir, cfg.run_dir / "corpus", tiny_world.model_dir
    )
    return IndexBuild(index_dir, verify_index(index_dir), reused=False)


@pytest.fixture(scope="module")
def retriever(built_index, index_run):
    r = retriever_for(index_run[1], built_index.index_dir)
    yield r
    r.close()


@pytest.fixture(scope="module")
def chunks(built_index):
    shards = built_index.manifest["shards"]
    tables = [pq.read_table(built_index.index_dir / s["chunks_file"]) for s in shards]
    rows = [row for t in tables for row in t.select(["chunk_id", "doc_id", "text"]).to_pylist()]
    return sorted(rows, key=lambda r: r["chunk_id"])


def _sample(chunks, n, seed=0):
    rng = np.random.default_rng(seed)
    return [chunks[i] for i in rng.choice(len(chunks), n, replace=False)]


def _all_vectors(index_dir, manifest):
    """The stored vectors of every (flat) shard, with their chunk and doc ids."""
    vecs, ids, docs = [], [], []
    for s in manifest["shards"]:
        assert s["index_type"] == "flat"
        index = faiss.read_index(str(index_dir / s["index_file"]))
        vecs.append(index.reconstruct_n(0, index.ntotal))
        table = pq.read_table(index_dir / s["chunks_file"], columns=["chunk_id", "doc_id"])
        ids += table["chunk_id"].to_pylist()
        docs += table["doc_id"].to_pylist()
    return np.concatenate(vecs), np.array(ids), np.array(docs)


def test_manifest_describes_the_shards(built_index, index_run, test_config):
    m = verify_index(built_index.index_dir)
    n_train = read_docs(index_run[1].run_dir / "corpus", "train").num_rows
    assert (
        0.8 * INDEXED_DOCS < m["n_docs"] == n_train <= INDEXED_DOCS
        and m["dim"] == 384
        and m["embedder"] == "all-MiniLM-L6-v2"
    )
    assert len(m["shards"]) == test_config.index.num_shards
    assert sum(s["n_vectors"] for s in m["shards"]) == m["n_chunks"] > 1000
    assert all(s["n_vectors"] > 0.3 * m["n_chunks"] / len(m["shards"]) for s in m["shards"])
    assert set(m["files"]) == {s[k] for s in m["shards"] for k in ("index_file", "chunks_file")}


def test_query_from_a_chunks_text_retrieves_that_chunk(retriever, chunks):
    picked = _sample(chunks, 12)
    hits = retriever.search([c["text"] for c in picked], [None] * len(picked), k=5)
    for chunk, row in zip(picked, hits, strict=True):
        assert len(row) == 5
        assert row[0].chunk_id == chunk["chunk_id"], (chunk["text"][:80], row[:2])
        assert row[0].score == pytest.approx(1.0, abs=1e-4)
        assert [h.score for h in row] == sorted((h.score for h in row), reverse=True)


def test_same_document_is_excluded_and_k_hits_remain(retriever, chunks):
    picked = _sample(chunks, 12, seed=1)
    texts, own = [c["text"] for c in picked], [c["doc_id"] for c in picked]
    saved = retriever.cfg
    try:
        for margin in (saved.exclude_margin, 0):  # margin 0: only the re-ask loop saves k
            retriever.cfg = replace(saved, exclude_margin=margin)
            hits = retriever.search(texts, own, k=8)
            for doc_id, row in zip(own, hits, strict=True):
                assert len(row) == 8
                assert all(h.doc_id != doc_id for h in row)
    finally:
        retriever.cfg = saved
    # Without exclusion the query's own document dominates: the exclusion is doing real work.
    unexcluded = retriever.search(texts, [None] * len(texts), k=8)
    assert sum(h.doc_id == d for d, row in zip(own, unexcluded, strict=True) for h in row) > 12


def test_sharded_results_equal_one_flat_index(retriever, built_index, chunks):
    vectors, ids, docs = _all_vectors(built_index.index_dir, built_index.manifest)
    single = faiss.IndexFlatIP(vectors.shape[1])
    single.add(vectors)
    picked = _sample(chunks, 16, seed=2)
    queries = retriever.embed([c["text"][: len(c["text"]) // 2] for c in picked])
    own = [c["doc_id"] for c in picked]
    k = 8
    scores, rows = single.search(queries, 400)
    got = retriever.search_vectors(queries, own, k=k)
    for q in range(len(picked)):
        keep = [(s, r) for s, r in zip(scores[q], rows[q], strict=True) if docs[r] != own[q]][:k]
        assert [h.chunk_id for h in got[q]] == [ids[r] for _, r in keep]
        np.testing.assert_allclose([h.score for h in got[q]], [s for s, _ in keep], atol=1e-5)


def test_persisted_shards_reload_in_new_actors_and_answer_identically(
    retriever, built_index, test_config, chunks
):
    picked = _sample(chunks, 10, seed=3)
    queries = retriever.embed([c["text"] for c in picked])
    own = [c["doc_id"] for c in picked]
    before = retriever.search_vectors(queries, own, k=8)
    again = Retriever(
        built_index.index_dir, test_config.index, test_config.resources.shard.cpus,
        embedder=retriever.embedder,
    )  # fmt: skip
    try:
        assert again.search_vectors(queries, own, k=8) == before
    finally:
        again.close()


def test_get_chunks_returns_text_and_token_ids(retriever, chunks):
    picked = _sample(chunks, 20, seed=4)
    rows = retriever.get_chunks([c["chunk_id"] for c in picked])
    for want, got in zip(picked, rows, strict=True):
        assert got["chunk_id"] == want["chunk_id"] and got["text"] == want["text"]
        assert got["n_tokens"] == len(got["input_ids"]) > 0
        assert all(isinstance(t, int) for t in got["input_ids"])


def test_truncated_index_file_gives_one_clear_error(built_index, index_run, tiny_world, tmp_path):
    cfg = index_run[1]
    broken = tmp_path / "index"
    shutil.copytree(built_index.index_dir, broken)
    victim = broken / built_index.manifest["shards"][1]["index_file"]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])

    for attempt in (
        lambda: Retriever(broken, cfg.index),
        lambda: build_index(broken, cfg.run_dir / "corpus", tiny_world.model_dir, cfg.index),
        lambda: ShardIndex(broken, 1),  # no checksum here: FAISS itself fails to read the file
    ):
        with pytest.raises(UserError) as err:
            attempt()
        message = str(err.value)
        assert "\n" not in message
        assert str(victim) in message
        assert "policylong build-index" in message and str(broken) in message


def test_rebuild_with_unchanged_inputs_reuses_the_index(built_index, index_run, tiny_world):
    cfg, model_dir = index_run[1], tiny_world.model_dir
    index_dir = built_index.index_dir
    stamps = {p.name: p.stat().st_mtime_ns for p in index_dir.iterdir()}
    again = build_index(index_dir, cfg.run_dir / "corpus", model_dir, cfg.index, cfg.run.seed)
    assert again.reused and again.manifest == built_index.manifest
    assert {p.name: p.stat().st_mtime_ns for p in index_dir.iterdir()} == stamps
    # Query-time keys do not invalidate the index; build keys do.
    ids = read_docs(cfg.run_dir / "corpus", "train")["doc_id"].to_pylist()
    key = build_key(ids, model_dir, cfg.index)
    assert key == again.manifest["build_key"]
    assert key == build_key(ids, model_dir, replace(cfg.index, nprobe=99, top_k=3))
    assert key != build_key(ids, model_dir, replace(cfg.index, chunk_tokens=32))
    assert key != build_key(ids[1:], model_dir, cfg.index)


def test_cli_build_index_again_finds_the_index_up_to_date(index_run, built_index, capsys):
    from pipelines.cli import main

    argv, _ = index_run
    capsys.readouterr()
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["reused"] is True and summary["index_dir"] == str(built_index.index_dir)


def test_ivf_shard_with_all_lists_probed_equals_flat(built_index):
    vectors, _, _ = _all_vectors(built_index.index_dir, built_index.manifest)
    cfg = IndexSection(flat_max_vectors=0, ivf_nlist=32)
    ivf, info = make_faiss_index(vectors, cfg, seed=0)
    assert info == {"index_type": "ivf", "nlist": 32}
    flat, _ = make_faiss_index(vectors, replace(cfg, flat_max_vectors=len(vectors)), seed=0)
    queries = vectors[:50]
    ivf.nprobe = 32
    np.testing.assert_array_equal(ivf.search(queries, 10)[1], flat.search(queries, 10)[1])
    ivf.nprobe = 8  # the approximate setting still finds the vector itself
    assert (ivf.search(queries, 1)[1][:, 0] == np.arange(50)).mean() > 0.9


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return np.mean(
        [len(set(f[f >= 0]) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)]
    )


def test_rerank_against_the_float_vectors_raises_pq_recall(built_index):
    """Real MiniLM vectors: coarse PQ codes (8 bytes) lose neighbours; re-ranking factor x k of
    their candidates by exact inner product gets them back, more with a longer shortlist, and
    the scores it gives are exact. (Measured: plain 0.42; factor 5, 10, 50: 0.74, 0.87, 0.99.)"""
    vectors, _, _ = _all_vectors(built_index.index_dir, built_index.manifest)
    cfg = IndexSection(flat_max_vectors=0, ivf_nlist=16, pq_bytes=8)
    pq_index, info = make_faiss_index(vectors, cfg, seed=0)
    assert info == {"index_type": "ivf_pq", "nlist": 16, "pq_bytes": 8}
    set_nprobe(pq_index, 16)  # every list: what is lost is the codes' error alone
    queries = vectors[::20]
    exact = _exact_top(vectors, queries, 10)[1]
    plain = _recall(pq_index.search(queries, 10)[1], exact)
    recall = {f: _recall(Reranked(pq_index, vectors, f).search(queries, 10)[1], exact)
              for f in (5, 10, 50)}  # fmt: skip
    assert plain < 0.6 and recall[10] > plain + 0.3, (plain, recall)
    assert recall[5] < recall[10] < recall[50] and recall[50] > 0.97, recall
    scores, ids = Reranked(pq_index, vectors, 10).search(queries, 10)
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", vectors[ids], queries), rtol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()
    # OPQ is wired: the rotation is part of the index and still answers by inner product.
    opq_index, info = make_faiss_index(vectors, replace(cfg, opq=True), seed=0)
    assert info["opq"] is True and isinstance(opq_index, faiss.IndexPreTransform)
    set_nprobe(opq_index, 16)
    assert _recall(Reranked(opq_index, vectors, 50).search(queries, 10)[1], exact) > 0.97


@pytest.fixture(scope="module")
def pq_index_dirs(built_index, index_run, tiny_world, tmp_path_factory, monkeypatch_module):
    """The real build (chunking, shard files, manifest) of the same corpus as OPQ+IVF-PQ, with and
    without re-rank vectors; the embeddings are the flat index's (no second embedding pass)."""
    from pipelines.world import build_index as builder

    vectors, ids, _ = _all_vectors(built_index.index_dir, built_index.manifest)
    row = {c: i for i, c in enumerate(ids)}
    monkeypatch_module.setattr(
        builder, "embed_chunks",
        lambda chunks, cfg, *_: vectors[[row[c] for c in chunks["chunk_id"].to_pylist()]],
    )  # fmt: skip
    cfg = index_run[1]
    pq_cfg = replace(cfg.index, flat_max_vectors=0, ivf_nlist=8, pq_bytes=8, opq=True)
    root = tmp_path_factory.mktemp("pq_index")
    out = {}
    for name, factor in (("rerank", 10), ("codes_only", 0)):
        out[name] = build_index(
            root / name, cfg.run_dir / "corpus", tiny_world.model_dir,
            replace(pq_cfg, rerank_factor=factor), cfg.run.seed,
        ).index_dir  # fmt: skip
    return out, vectors, ids, pq_cfg


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_pq_shards_rerank_through_the_retriever(pq_index_dirs, retriever, chunks):
    dirs, vectors, ids, pq_cfg = pq_index_dirs
    manifest = verify_index(dirs["rerank"])
    for s in manifest["shards"]:  # floats on disk, checksummed, beside 8-byte codes
        assert s["index_type"] == "ivf_pq" and s["opq"] is True
        assert s["vectors_file"] in manifest["files"]
        on_disk = np.load(dirs["rerank"] / s["vectors_file"], mmap_mode="r")
        assert on_disk.shape == (s["n_vectors"], 384)
    assert manifest["index_config"]["rerank_vectors"] is True
    assert "vectors_file" not in verify_index(dirs["codes_only"])["shards"][0]

    picked = _sample(chunks, 40, seed=5)
    queries = retriever.embed([c["text"][: len(c["text"]) // 2] for c in picked])
    exact = _exact_top(vectors, queries, 8)[1]
    found = {}
    for name, factor in (("rerank", 10), ("codes_only", 0)):
        r = Retriever(dirs[name], replace(pq_cfg, rerank_factor=factor), 0.05,
                      embedder=retriever.embedder)  # fmt: skip
        try:
            found[name] = r.search_vectors(queries, [None] * len(picked), k=8)
        finally:
            r.close()
    recall = {
        name: np.mean([len({h.chunk_id for h in row} & set(ids[e])) / 8
                       for row, e in zip(hits, exact, strict=True)])
        for name, hits in found.items()
    }  # fmt: skip
    assert recall["rerank"] > 0.95 and recall["rerank"] > recall["codes_only"] + 0.1, recall
    at = {c: i for i, c in enumerate(ids)}
    for hits, q in zip(found["rerank"], queries, strict=True):  # scores: exact inner products
        exact_scores = [float(vectors[at[h.chunk_id]] @ q) for h in hits]
        np.testing.assert_allclose([h.score for h in hits], exact_scores, atol=1e-5)
    # Asking an index built without the floats to re-rank is refused, naming the key.
    with pytest.raises(UserError, match="index.rerank_factor = 10"):
        ShardIndex(dirs["codes_only"], 0, rerank_factor=10)


def _exact_top(vectors: np.ndarray, queries: np.ndarray, k: int):
    scores = queries @ vectors.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, top, axis=1), top


def test_rerank_on_flat_shards_changes_nothing(built_index):
    plain, asked = (
        ShardIndex(built_index.index_dir, 0),
        ShardIndex(built_index.index_dir, 0, rerank_factor=10),
    )
    vectors, _, _ = _all_vectors(built_index.index_dir, built_index.manifest)
    assert asked.search(vectors[:20], 8) == plain.search(vectors[:20], 8)
