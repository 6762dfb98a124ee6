"""Ingest: a directory of .jsonl / .parquet / .txt files -> deduplicated Parquet document shards.

Ray Data reads the files in parallel (one task per file batch), normalizes the text, hashes it into
a stable document id, filters by length and drops exact duplicates. Bad files and lines are skipped
and counted, each with a warning naming the file (and line). The output is written to a temporary
directory and moved into place only when complete, so a failed ingest never damages an earlier one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.config import CorpusSection
from pipelines.core.errors import UserError

log = logging.getLogger(__name__)
SUPPORTED = (".jsonl", ".parquet", ".txt")
DOC_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
    ]
)


def normalize(text: str) -> str:
    """NFC, unified newlines, trailing spaces stripped: the form that is hashed and stored."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.strip().split("\n"))


def doc_id_of(normalized: str) -> str:
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()[:20]


def split_of(doc_id: str, heldout_fraction: float) -> str:
    """Deterministic held-out split from the id, so it never changes between runs."""
    return "heldout" if int(doc_id[:8], 16) / 0xFFFFFFFF < heldout_fraction else "train"


def _problem(path: str, message: str) -> dict:
    return {"kind": "problem", "text": "", "source": path, "message": message}


def _doc(source: str, text: str) -> dict:
    return {"kind": "doc", "text": text, "source": source, "message": ""}


def read_one_file(path: str, text_field: str) -> list[dict]:
    """Rows for one input file: documents, plus 'problem' rows for what had to be skipped."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED:
        return [_problem(path, f"unsupported file type '{suffix}' (use {', '.join(SUPPORTED)})")]
    if suffix == ".parquet":
        try:
            table = pq.read_table(p)
        except Exception as e:  # noqa: BLE001 - any unreadable parquet is a skipped file
            return [_problem(path, f"not a readable Parquet file ({type(e).__name__})")]
        if text_field not in table.column_names:
            return [_problem(path, f"no column '{text_field}' (set corpus.text_field)")]
        rows = [
            _doc(f"{path}:row{i}", t)
            if isinstance(t, str)
            else _problem(path, f"row {i}: not text")
            for i, t in enumerate(table.column(text_field).to_pylist())
        ]
        return rows or [_problem(path, "empty file")]
    raw = p.read_bytes()
    if not raw.strip():
        return [_problem(path, "empty file")]
    if b"\x00" in raw:
        return [_problem(path, "binary file (contains NUL bytes)")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return [_problem(path, f"not UTF-8 (bad byte at offset {e.start}); re-encode as UTF-8")]
    if suffix == ".txt":
        return [_doc(path, text)]
    out: list[dict] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            out.append(_problem(f"{path}:{n}", "malformed JSON line"))
            continue
        value = obj.get(text_field) if isinstance(obj, dict) else None
        if not isinstance(value, str):
            out.append(_problem(f"{path}:{n}", f"no string field '{text_field}'"))
            continue
        out.append(_doc(f"{path}:{n}", value))
    return out


@dataclass
class IngestReport:
    files: int = 0
    documents_read: int = 0
    documents_written: int = 0
    duplicates: int = 0
    too_short: int = 0
    too_long: int = 0
    problems: list[str] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return self.__dict__ | {"problems_count": len(self.problems)}


def _read_batch(batch: dict, text_field: str) -> dict:
    rows = [r for path in batch["path"] for r in read_one_file(str(path), text_field)]
    keys = ("kind", "text", "source", "message")
    return {k: [r[k] for r in rows] for k in keys}


def _normalize_batch(batch: dict, cfg: CorpusSection) -> dict:
    texts = [normalize(t) for t in batch["text"]]
    ids = [doc_id_of(t) for t in texts]
    n_chars = [len(t) for t in texts]
    return {
        "doc_id": ids,
        "text": texts,
        "source": list(batch["source"]),
        "n_chars": n_chars,
        "split": [split_of(i, cfg.heldout_fraction) for i in ids],
    }


def _first_of_group(group: dict) -> dict:
    """Exact duplicates share doc_id: keep the first by source name (deterministic)."""
    order = sorted(range(len(group["source"])), key=lambda i: group["source"][i])
    return {k: [group[k][order[0]]] for k in group} | {"copies": [len(order)]}


def ingest(input_dir: Path, out_dir: Path, cfg: CorpusSection) -> IngestReport:
    """Read input_dir, write out_dir/docs-*.parquet + manifest.json atomically."""
    import ray
    from ray.data.expressions import col

    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise UserError(f"corpus directory '{input_dir}' does not exist: set corpus.source")
    files = sorted(str(p) for p in input_dir.rglob("*") if p.is_file())
    report = IngestReport(files=len(files))
    if not files:
        raise UserError(f"corpus directory '{input_dir}' has no files: add .jsonl/.parquet/.txt")

    rows = ray.data.from_items([{"path": f} for f in files]).map_batches(
        _read_batch, fn_kwargs={"text_field": cfg.text_field}, batch_size=4
    )
    rows = rows.materialize()
    for r in rows.filter(expr=col("kind") == "problem").take_all():
        report.problems.append(f"{r['source']}: {r['message']}")
        log.warning("skipped %s: %s", r["source"], r["message"])
    docs = rows.filter(expr=col("kind") == "doc").map_batches(
        _normalize_batch, fn_kwargs={"cfg": cfg}
    )
    docs = docs.materialize()
    report.documents_read = docs.count()
    if report.documents_read:
        n_chars = col("n_chars")
        report.too_short = docs.filter(expr=n_chars < cfg.min_chars).count()
        report.too_long = docs.filter(expr=n_chars > cfg.max_chars).count()
        kept = docs.filter(expr=(n_chars >= cfg.min_chars) & (n_chars <= cfg.max_chars))
        unique = kept.groupby("doc_id").map_groups(_first_of_group).sort("doc_id")
    if not report.documents_read or unique.count() == 0:
        first = f"; first problem: {report.problems[0]}" if report.problems else ""
        raise UserError(
            f"corpus directory '{input_dir}' has no usable document ({report.documents_read} "
            f"read, {report.too_short} shorter than corpus.min_chars={cfg.min_chars}, "
            f"{report.too_long} longer than corpus.max_chars={cfg.max_chars}, "
            f"{len(report.problems)} problems{first}): check the files and filters"
        )

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for n, batch in enumerate(
        unique.iter_batches(batch_size=cfg.rows_per_shard, batch_format="pyarrow")
    ):
        report.duplicates += sum(c - 1 for c in batch.column("copies").to_pylist())
        table = pa.table({name: batch.column(name) for name in DOC_SCHEMA.names}, schema=DOC_SCHEMA)
        name = f"docs-{n:05d}.parquet"
        pq.write_table(table, tmp / name)
        report.shards.append(name)
        report.documents_written += table.num_rows
    (tmp / "manifest.json").write_text(json.dumps(report.to_dict(), indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.replace(out_dir)
    return report


def read_docs(corpus_dir: Path, split: str | None = None) -> pa.Table:
    """The ingested documents (optionally one split) as one Arrow table, in doc_id order."""
    corpus_dir = Path(corpus_dir)
    manifest = corpus_dir / "manifest.json"
    if not manifest.is_file():
        raise UserError(f"no ingested corpus at '{corpus_dir}': run `policylong ingest` first")
    shards = json.loads(manifest.read_text())["shards"]
    table = pa.concat_tables(pq.read_table(corpus_dir / s, schema=DOC_SCHEMA) for s in shards)
    if split is not None:
        table = table.filter(pa.compute.equal(table["split"], split))
    return table
