"""The durable sample log: what construction commits and what training streams from.

Each commit is one Parquet shard named by a hash of (stage, seed doc ids), so the same work always
lands under the same name. A shard counts only once its completion marker exists; the marker holds
the commit sequence number that fixes the order training reads in. Rerunning a stage skips
committed shards (no duplicates); a shard without marker (the process died mid-write) is discarded
and redone. A construction manifest (samples/manifest.json; not the driver's stage_manifest.json),
written last, says construction of that stage is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.atomic import write_json_atomic
from pipelines.core.records import StageCounts

SEGMENT = pa.struct(
    [
        ("chunk_id", pa.string()),
        ("role", pa.string()),  # positive | negative | filler | document
        ("start", pa.int32()),
        ("length", pa.int32()),
        ("r", pa.float32()),  # relative entropy reduction (NaN when not verified)
        ("similarity", pa.float32()),
        ("doc_id", pa.string()),  # the seed document the piece serves (or is)
        ("anchors", pa.list_(pa.int32())),  # positives: the document positions verified at
        ("offset", pa.int32()),  # tokens of the piece cut from its start (0: whole)
    ]
)
SAMPLE_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("stage", pa.int32()),
        ("policy_version", pa.int32()),
        ("seed_doc_id", pa.string()),
        ("positions", pa.list_(pa.int32())),  # selected high-entropy positions in the document
        ("input_ids", pa.list_(pa.int32())),
        ("segments", pa.list_(SEGMENT)),
    ]
)
MARKER = ".done"


def shard_name(stage: int, seed_doc_ids: list[str]) -> str:
    key = f"{stage}:" + ",".join(sorted(seed_doc_ids))
    return f"shard-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class Commit:
    name: str
    seq: int
    rows: int
    tokens: int
    committed_at: float


class SampleLog:
    """One stage's log directory. Single writer (the stage driver), any number of readers."""

    def __init__(self, root: Path, writer: bool = False):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if writer:  # only the writer may clean up: a reader could race a commit in flight
            self._discard_uncommitted()
            self.failure_path.unlink(missing_ok=True)  # a rerun starts afresh

    def _discard_uncommitted(self) -> None:
        for path in self.root.glob("shard-*"):
            if path.suffix in (".parquet", ".tmp") and not self._marker(path.stem).exists():
                path.unlink(missing_ok=True)  # half-written by a killed run: redo it

    def _marker(self, name: str) -> Path:
        return self.root / f"{name}{MARKER}"

    def is_committed(self, name: str) -> bool:
        return self._marker(name).exists()

    def commits(self) -> list[Commit]:
        """Committed shards in commit order."""
        found = [Commit(**json.loads(p.read_text())) for p in self.root.glob(f"shard-*{MARKER}")]
        return sorted(found, key=lambda c: c.seq)

    def commit(self, name: str, table: pa.Table) -> Commit | None:
        """Write one shard atomically; None when it was already committed."""
        if self.is_committed(name):
            return None
        table = table.cast(SAMPLE_SCHEMA)
        tmp = self.root / f"{name}.tmp"
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.replace(self.root / f"{name}.parquet")
        tokens = sum(len(x) for x in table.column("input_ids").to_pylist())
        commit = Commit(name, len(self.commits()), table.num_rows, tokens, time.time())
        write_json_atomic(self._marker(name), commit.__dict__)
        return commit

    def read(self, name: str) -> pa.Table:
        return pq.read_table(self.root / f"{name}.parquet", schema=SAMPLE_SCHEMA)

    # The construction manifest marks construction complete (the driver writes the stage
    # manifest, stage_manifest.json, once the stage has also trained).
    @property
    def construction_manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def finish(
        self, counts: StageCounts, samples_committed: int, first_commit_at: float | None
    ) -> None:
        """Construction is over: the shards, their totals and what construction did."""
        commits = self.commits()
        manifest = {
            "complete": True,
            "shards": [c.name for c in commits],
            "samples": sum(c.rows for c in commits),
            "tokens": sum(c.tokens for c in commits),
            "finished_at": time.time(),
            "counts": counts.to_dict()
            | {"samples_committed": samples_committed, "first_commit_at": first_commit_at},
        }
        write_json_atomic(self.construction_manifest_path, manifest, indent=2)

    # A failed construction says so, so that readers stop waiting for samples that never come.
    @property
    def failure_path(self) -> Path:
        return self.root / "failed.json"

    def fail(self, reason: str) -> None:
        write_json_atomic(self.failure_path, {"reason": reason, "failed_at": time.time()})

    def failure(self) -> str | None:
        if not self.failure_path.exists():
            return None
        return json.loads(self.failure_path.read_text())["reason"]

    def is_finished(self) -> bool:
        return self.construction_manifest_path.exists()

    def manifest(self) -> dict:
        return json.loads(self.construction_manifest_path.read_text())
