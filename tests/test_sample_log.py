"""The durable sample log: atomic commits, ordered reads, no duplicates on rerun."""

from __future__ import annotations

import pyarrow as pa

from pipelines.core.records import StageCounts
from pipelines.core.sample_log import SAMPLE_SCHEMA, SampleLog, shard_name


def _table(ids: list[str]) -> pa.Table:
    rows = [
        {
            "sample_id": i,
            "stage": 0,
            "policy_version": 0,
            "seed_doc_id": i,
            "positions": [1],
            "input_ids": [1, 2, 3],
            "segments": [],
        }
        for i in ids
    ]
    return pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)


def test_commit_is_idempotent_and_ordered(tmp_path):
    log = SampleLog(tmp_path, writer=True)
    a, b = shard_name(0, ["d2", "d1"]), shard_name(0, ["d3"])
    assert a == shard_name(0, ["d1", "d2"]) != shard_name(1, ["d1", "d2"])
    assert log.commit(a, _table(["s1", "s2"])).seq == 0
    assert log.commit(b, _table(["s3"])).seq == 1
    assert log.commit(a, _table(["s1", "s2"])) is None  # rerun: skipped
    assert [c.name for c in log.commits()] == [a, b]
    assert log.read(a).column("sample_id").to_pylist() == ["s1", "s2"]


def test_half_written_shard_is_discarded_by_the_next_writer(tmp_path):
    log = SampleLog(tmp_path, writer=True)
    done = shard_name(0, ["ok"])
    log.commit(done, _table(["ok"]))
    half = shard_name(0, ["half"])
    (tmp_path / f"{half}.parquet").write_bytes(b"PAR1 truncated")  # died before its marker
    reader = SampleLog(tmp_path)
    assert [c.name for c in reader.commits()] == [done]
    assert (tmp_path / f"{half}.parquet").exists()  # readers never delete
    SampleLog(tmp_path, writer=True)
    assert not (tmp_path / f"{half}.parquet").exists()
    assert log.commit(half, _table(["half"])) is not None


def test_manifest_marks_the_stage_finished(tmp_path):
    log = SampleLog(tmp_path, writer=True)
    log.commit(shard_name(0, ["a"]), _table(["a", "b"]))
    assert not log.is_finished()
    log.finish(StageCounts(documents=2, samples=2), samples_committed=2, first_commit_at=1.0)
    m = log.manifest()
    assert m["complete"] and m["samples"] == 2 and m["tokens"] == 6
    assert m["counts"]["documents"] == 2 and m["counts"]["samples_committed"] == 2


def test_stream_reads_in_commit_order_and_keeps_only_shards_in_use(tmp_path):
    from pipelines.steps.train import SampleStream

    log = SampleLog(tmp_path, writer=True)
    names = [shard_name(0, [f"d{i}"]) for i in range(3)]
    for i, name in enumerate(names):
        log.commit(name, _table([f"s{i}a", f"s{i}b"]))
    log.finish(StageCounts(), 6, None)
    stream = SampleStream(tmp_path, budget=5, poll_s=0.01)
    assert stream.wait_for(10) == 5  # capped at the budget
    got = []
    for p in range(5):
        got.append(stream.get(p)["sample_id"])
        assert len(stream.tables) == 1  # the shard in use only
    assert got == ["s0a", "s0b", "s1a", "s1b", "s2a"]
