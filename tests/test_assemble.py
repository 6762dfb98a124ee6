"""Assembly: exact length, document last, positives far back, deterministic, provenance kept."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipelines.assemble import Piece, assemble_sample
from pipelines.config import AssembleSection
from pipelines.sample_log import SAMPLE_SCHEMA

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
    doc = list(range(1000, 1000 + doc_len))
    return assemble_sample(0, "doc", doc, pos, neg, _filler, seq_len, EOS, AssembleSection(), seed)


def test_sample_is_exactly_seq_len_with_document_last():
    for seq_len in (512, 1024, 4096):
        s = _make(seq_len=seq_len)
        assert len(s.input_ids) == seq_len
        doc = list(range(1000, 1300))[-(seq_len // 2) :]  # a document takes at most half
        assert s.input_ids[-len(doc) :] == doc
        assert s.segments[-1]["role"] == "document"
        # segments tile the sequence with no gap or overlap
        ends = [seg["start"] + seg["length"] for seg in s.segments]
        assert [seg["start"] for seg in s.segments[1:]] == ends[:-1] and ends[-1] == seq_len


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
