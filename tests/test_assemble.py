"""Assembly: exact length, document last, positives far back, deterministic, provenance kept;
filler chunks sampled by real retrieval shard actors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from pipelines.core.config import AssembleSection
from pipelines.core.sample_log import SAMPLE_SCHEMA
from pipelines.steps.assemble import Piece, anchors_kept, assemble_sample, document_window

EOS = 0


def _filler(rng: np.random.Generator, want: int) -> Piece:
    n = int(rng.integers(20, 60))
    return Piece(f"f{int(rng.integers(1_000_000))}", [7] * n, "filler")


def _make(seed=1, seq_len=2048, n_pos=3, n_neg=3, doc_len=300):
    pos = [
        Piece(f"p{i}", [100 + i] * 50, "positive", r=0.5 - 0.1 * i, similarity=0.8)
        for i in range(n_pos)
    ]
    neg = [Piece(f"n{i}", [200 + i] * 50, "negative", r=0.0, similarity=0.7) for i in range(n_neg)]
    doc = list(range(1000, 1000 + doc_len))[: document_window(seq_len, 10**6)]
    return assemble_sample(0, "doc", doc, pos, neg, _filler, seq_len, EOS, AssembleSection(), seed)


def test_sample_is_exactly_seq_len_with_document_last():
    for seq_len in (512, 1024, 4096):
        s = _make(seq_len=seq_len)
        assert len(s.input_ids) == seq_len
        doc = list(range(1000, 1300))[: seq_len // 2]  # its beginning, at most half
        assert s.input_ids[-len(doc) :] == doc
        assert s.segments[-1]["role"] == "document"
        # segments tile the sequence with no gap or overlap
        ends = [seg["start"] + seg["length"] for seg in s.segments]
        assert [seg["start"] for seg in s.segments[1:]] == ends[:-1] and ends[-1] == seq_len


def test_a_document_longer_than_half_the_window_is_refused_not_cut():
    """Construction passes the stage's document window (what screening scored); a longer
    document would silently lose anchors, so assembly refuses it."""
    import pytest

    doc = list(range(300))
    with pytest.raises(ValueError, match="half of seq_len 512"):
        assemble_sample(0, "d", doc, [], [], _filler, 512, EOS, AssembleSection(), 1)
    assert document_window(512, 1024) == 256 and document_window(4096, 1024) == 1024


def test_every_positive_anchor_is_inside_the_document_segment():
    pos = [
        Piece(f"p{i}", [100 + i] * 50, "positive", r=0.5, doc_id="doc", anchors=[10 * i, 255])
        for i in range(3)
    ]
    s = assemble_sample(0, "doc", list(range(256)), pos, [], _filler, 512, EOS,
                        AssembleSection(), 1)  # fmt: skip
    assert anchors_kept(s.segments) == (6, 6)
    doc = s.segments[-1]
    assert doc["offset"] == 0 and doc["length"] == 256 and doc["doc_id"] == "doc"
    s.segments[-1] = doc | {"length": 200}  # a document cut before anchor 255: not kept
    assert anchors_kept(s.segments) == (6, 3)


def test_positives_are_farther_from_the_document_than_negatives():
    s = _make()
    start = {seg["role"]: [] for seg in s.segments}
    for seg in s.segments:
        start[seg["role"]].append(seg["start"])
    assert len(start["positive"]) == 3 and len(start["negative"]) == 3
    assert np.mean(start["positive"]) < np.mean(start["negative"])
    assert max(start["positive"]) < min(start["negative"])
    for seg in s.segments:  # every placed chunk is really at its recorded place
        if seg["role"] == "positive":
            assert s.input_ids[seg["start"]] == 100 + int(seg["chunk_id"][1:])


def test_same_seed_same_sample_and_other_seed_differs():
    assert _make(seed=3).input_ids == _make(seed=3).input_ids
    assert _make(seed=3).input_ids != _make(seed=4).input_ids


def test_what_does_not_fit_is_dropped_negatives_first():
    s = _make(seq_len=512, n_pos=4, n_neg=4, doc_len=256)  # prefix 256 tokens: 5 pieces of 51 fit
    roles = [seg["role"] for seg in s.segments]
    assert roles.count("positive") == 4 and roles.count("negative") == 1
    assert len(s.input_ids) == 512


def test_provenance_round_trips_through_parquet(tmp_path):
    import pyarrow.parquet as pq

    s = _make()
    row = {
        "sample_id": s.sample_id,
        "stage": 1,
        "policy_version": 1,
        "seed_doc_id": s.seed_doc_id,
        "positions": [40, 120],
        "input_ids": s.input_ids,
        "segments": s.segments,
    }
    pq.write_table(pa.Table.from_pylist([row], schema=SAMPLE_SCHEMA), tmp_path / "x.parquet")
    back = pq.read_table(tmp_path / "x.parquet").to_pylist()[0]
    assert back["input_ids"] == s.input_ids and back["positions"] == [40, 120]
    assert [seg["chunk_id"] for seg in back["segments"]] == [seg["chunk_id"] for seg in s.segments]
    pos = [seg for seg in back["segments"] if seg["role"] == "positive"]
    assert {round(p["r"], 3) for p in pos} == {0.5, 0.4, 0.3}


# Fillers through the retrieval shards -------------------------------------------------------


def _write_index(root, shard_docs: list[dict[str, int]], dim: int = 8):
    """A real on-disk index (flat shards, chunk tables, checksummed manifest) of made-up chunks:
    shard_docs[s] = {doc_id: number of chunks}; chunk tokens encode (shard, row). Its rows."""
    import faiss

    from pipelines.core.index_format import (
        CHUNK_SCHEMA,
        FORMAT_VERSION,
        MANIFEST,
        sha256_file,
        shard_files,
        write_chunk_table,
    )

    rng = np.random.default_rng(0)
    shards, files, rows = [], {}, {}
    for s, docs in enumerate(shard_docs):
        table = []
        for doc, n in docs.items():
            for o in range(n):
                cid = f"{s:02d}{len(table):06d}{doc}"
                length = int(rng.integers(8, 40))
                table.append(
                    {"chunk_id": cid, "doc_id": doc, "ordinal": o, "start_token": 0,
                     "n_tokens": length, "text": cid, "input_ids": [1000 * s + len(table)] * length}
                )  # fmt: skip
                rows[cid] = table[-1]
        index_name, chunks_name = shard_files(s)
        write_chunk_table(pa.Table.from_pylist(table, schema=CHUNK_SCHEMA), root / chunks_name)
        index = faiss.IndexFlatIP(dim)
        index.add(rng.standard_normal((len(table), dim)).astype(np.float32))
        faiss.write_index(index, str(root / index_name))
        shards.append(
            {"shard": s, "n_vectors": len(table), "index_file": index_name,
             "chunks_file": chunks_name, "index_type": "flat"}
        )  # fmt: skip
        for name in (index_name, chunks_name):
            path = root / name
            files[name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {"format_version": FORMAT_VERSION, "shards": shards, "files": files}
    (root / MANIFEST).write_text(json.dumps(manifest))
    return rows


def _pool(root, shard_docs, batch=16):
    from pipelines.core.config import IndexSection
    from pipelines.steps.assemble import FillerPool
    from pipelines.steps.retrieve import start_shards

    rows = _write_index(root, shard_docs)
    shards, sizes = start_shards(root, len(shard_docs), IndexSection(), cpus_per_shard=0.05)
    return FillerPool(shards, sizes, batch), shards, rows


def _draws(pool, doc, seed, n):
    draw, rng = pool.sampler(doc), np.random.default_rng(seed)
    return [draw(rng, 100) for _ in range(n)]


def test_fillers_come_from_the_shards_not_the_driver(ray_local, tmp_path):
    import ray

    pool, shards, rows = _pool(tmp_path, [{"a": 300, "b": 60}, {"a": 40, "c": 60}])
    try:
        # The driver holds no chunk: with the tables gone from disk, only the actors have them.
        for table in tmp_path.glob("*.chunks.parquet"):
            table.unlink()
        assert vars(pool).keys() == {"shards", "sizes", "batch"} and pool.sizes == [360, 100]
        got = _draws(pool, "a", seed=5, n=2000)
        for piece in got:  # real chunks of the index, with their own tokens, never doc "a"'s
            assert piece.role == "filler" and rows[piece.chunk_id]["doc_id"] != "a"
            assert piece.input_ids == rows[piece.chunk_id]["input_ids"]
        # Shards weighted by size: shard 0 has 60 chunks of other documents, shard 1 has 60, but
        # shard 0 is drawn 360/460 of the time (its "a" chunks are redrawn inside the shard).
        share = np.mean([p.chunk_id.startswith("00") for p in got])
        assert abs(share - 360 / 460) < 0.04, share
        # Same seed, same fillers; another seed or document, others.
        again = _draws(pool, "a", seed=5, n=2000)
        assert [p.chunk_id for p in again] == [p.chunk_id for p in got]
        assert [p.chunk_id for p in _draws(pool, "a", seed=6, n=50)] != [
            p.chunk_id for p in got[:50]
        ]
        assert any(p.chunk_id.endswith("a") for p in _draws(pool, "b", seed=5, n=200))
    finally:
        for actor in shards:
            ray.kill(actor)


def test_sample_with_shard_fillers_is_exact_and_deterministic(ray_local, tmp_path):
    import ray

    # Shard 1 holds only the seed document's chunks: the sampler must drop it, not loop.
    pool, shards, rows = _pool(tmp_path, [{"x": 50, "doc": 20}, {"doc": 30}], batch=8)
    try:
        doc = list(range(1000, 1300))
        pos = [Piece("p0", [5] * 50, "positive", r=0.4, similarity=0.8)]

        def make(seed):
            return assemble_sample(
                0, "doc", doc, pos, [], pool.sampler("doc"), 2048, EOS, AssembleSection(), seed
            )

        s = make(1)
        assert len(s.input_ids) == 2048 and s.input_ids[-300:] == doc
        assert s.segments[-1]["role"] == "document"
        fillers = [seg for seg in s.segments if seg["role"] == "filler"]
        assert len(fillers) > 20
        for seg in fillers:
            row = rows[seg["chunk_id"]]
            assert row["doc_id"] == "x"
            body = s.input_ids[seg["start"] : seg["start"] + seg["length"]]
            assert body == [*row["input_ids"], EOS][: seg["length"]]
        assert make(1).input_ids == s.input_ids and make(2).input_ids != s.input_ids
    finally:
        for actor in shards:
            ray.kill(actor)
