"""Ingest of a mixed directory: exact counts, stable ids, bad files skipped and reported."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.core.config import CorpusSection
from pipelines.core.errors import UserError
from pipelines.world.ingest import doc_id_of, ingest, normalize, read_docs

LONG = "word " * 60  # 300 chars: above min_chars below


def _mixed_dir(root):
    root.mkdir()
    lines = [
        json.dumps({"text": "alpha " + LONG}),
        "{not json",
        json.dumps({"body": "no text field"}),
        json.dumps({"text": "beta " + LONG}),
        json.dumps({"text": "alpha " + LONG}),  # exact duplicate of line 1
        json.dumps({"text": "tiny"}),  # too short
    ]
    (root / "a.jsonl").write_text("\n".join(lines) + "\n")
    pq.write_table(pa.table({"text": ["gamma " + LONG, "beta " + LONG + "  "]}), root / "b.parquet")
    (root / "c.txt").write_text("delta " + LONG)
    (root / "d.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    (root / "e.txt").write_bytes(("epsilon " + LONG).encode("latin-1") + b"caf\xe9")
    (root / "f.txt").write_text("")
    (root / "notes.md").write_text("unsupported " + LONG)
    return root


def test_mixed_directory_exact_counts_and_stable_ids(tmp_path, ray_local):
    cfg = CorpusSection(min_chars=100, heldout_fraction=0.0)
    src = _mixed_dir(tmp_path / "in")
    report = ingest(src, tmp_path / "out1", cfg)
    assert report.files == 7
    # read: a.jsonl 4 docs (alpha, beta, alpha, tiny), b.parquet 2, c.txt 1
    assert report.documents_read == 7
    assert report.too_short == 1
    assert report.duplicates == 2  # alpha twice in a.jsonl; beta in a.jsonl and b.parquet
    assert report.documents_written == 4
    problems = "\n".join(report.problems)
    assert len(report.problems) == 6
    assert "a.jsonl:2: malformed JSON line" in problems
    assert "a.jsonl:3: no string field 'text'" in problems
    assert "d.txt: binary file" in problems
    assert "e.txt: not UTF-8" in problems
    assert "f.txt: empty file" in problems
    assert "notes.md: unsupported file type '.md'" in problems

    docs = read_docs(tmp_path / "out1")
    texts = sorted(t.split()[0] for t in docs["text"].to_pylist())
    assert texts == ["alpha", "beta", "delta", "gamma"]
    assert docs["doc_id"].to_pylist() == sorted(docs["doc_id"].to_pylist())
    assert set(docs["doc_id"].to_pylist()) == {
        doc_id_of(normalize(t)) for t in docs["text"].to_pylist()
    }

    again = ingest(src, tmp_path / "out2", cfg)
    assert again.documents_written == 4
    assert read_docs(tmp_path / "out2")["doc_id"].to_pylist() == docs["doc_id"].to_pylist()


def test_directory_without_usable_documents_is_one_clear_error(tmp_path, ray_local):
    src = tmp_path / "bad"
    src.mkdir()
    (src / "x.txt").write_bytes(b"\x00\x01\x02")
    (src / "y.jsonl").write_text("{oops\n")
    with pytest.raises(UserError, match="has no usable document"):
        ingest(src, tmp_path / "out", CorpusSection())


def test_failed_ingest_leaves_previous_output_intact(tmp_path, ray_local):
    src = tmp_path / "good"
    src.mkdir()
    (src / "doc.txt").write_text("kept " + LONG)
    out = tmp_path / "out"
    ingest(src, out, CorpusSection(min_chars=10))
    before = read_docs(out)["doc_id"].to_pylist()
    (src / "doc.txt").write_bytes(b"\x00")
    with pytest.raises(UserError):
        ingest(src, out, CorpusSection(min_chars=10))
    assert read_docs(out)["doc_id"].to_pylist() == before


def test_missing_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ingest(tmp_path / "nowhere", tmp_path / "out", CorpusSection())


def test_normalization_makes_whitespace_variants_share_an_id():
    assert doc_id_of(normalize("a b\r\nc  \n")) == doc_id_of(normalize("a b\nc"))
    assert doc_id_of(normalize("a b")) != doc_id_of(normalize("a c"))
