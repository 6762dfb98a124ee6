"""A construction killed mid-stage and rerun commits exactly what an uninterrupted one does."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines import construct
from pipelines.sample_log import SampleLog

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stage_ctx(load_test_profile, tiny_world, ray_local):
    from pipelines.build_index import build_index, cached_index_dir
    from pipelines.fleet import Fleet
    from pipelines.ingest import read_docs
    from pipelines.methods import method_spec
    from pipelines.policylong import seed_share
    from pipelines.screen import tokenize_docs
    from pipelines.tokenizer import load_tokenizer

    cfg = load_test_profile(
        "run.name=resume",
        "screen.batch_docs=3",
        "stages.batches_in_flight=2",
        # The test base barely uses context (see the issue notes): low thresholds give data.
        "verify.tau_pos=0.005",
        "verify.tau_neg=0.0",
    )
    tok = load_tokenizer(tiny_world.model_dir)
    index = build_index(
        cached_index_dir(cfg, tiny_world.corpus_dir, tiny_world.model_dir),
        tiny_world.corpus_dir,
        tiny_world.model_dir,
        cfg.index,
    )
    docs = tokenize_docs(tok, read_docs(tiny_world.corpus_dir, "train"), cfg.screen.max_doc_tokens)
    tables = index.manifest["chunk_tables"]
    with Fleet(cfg, method_spec("policylong"), index.index_dir, tables) as fleet:
        fleet.start(tiny_world.model_dir, 0)

        def make(stage_dir: Path) -> construct.StageContext:
            return construct.StageContext(cfg, 0, 512, 0, stage_dir, fleet, tok)

        yield make, seed_share(cfg, docs, 0)[:24]


def _ids(stage_dir: Path) -> list[str]:
    log = SampleLog(stage_dir / "samples")
    return [i for c in log.commits() for i in log.read(c.name)["sample_id"].to_pylist()]


def test_killed_and_rerun_stage_commits_the_same_samples(stage_ctx, tmp_path, monkeypatch):
    """Independent of how many positives pi_0 finds: the budget is never reached, so every batch
    is built, and the kill comes at the second commit (one batch is durable, the rest is not)."""
    make, seeds = stage_ctx
    budget = 10**6
    clean = make(tmp_path / "clean")
    construct.construct_stage(clean, seeds, budget)
    expected = _ids(tmp_path / "clean")
    assert expected, "pi_0 verified no positive in the seed documents: nothing to resume"

    real = construct._commit
    calls = []

    def dies_on_second_commit(ctx, log, result, room):
        calls.append(result.name)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed mid-stage")  # what a killed driver leaves behind
        return real(ctx, log, result, room)

    monkeypatch.setattr(construct, "_commit", dies_on_second_commit)
    killed = make(tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        construct.construct_stage(killed, seeds, budget)
    log = SampleLog(tmp_path / "killed" / "samples")
    assert not log.is_finished()
    assert [c.name for c in log.commits()] == calls[:1]  # exactly the first batch is durable
    partial = _ids(tmp_path / "killed")
    assert partial == expected[: len(partial)]

    monkeypatch.setattr(construct, "_commit", real)
    construct.construct_stage(killed, seeds, budget)
    again = _ids(tmp_path / "killed")
    assert again == expected
    assert len(set(again)) == len(again)
    manifest = SampleLog(tmp_path / "killed" / "samples").manifest()
    assert manifest["samples"] == len(expected)
    shards = sorted((tmp_path / "killed" / "samples").glob("shard-*.parquet"))
    lengths = [len(x) for f in shards for x in pq.read_table(f)["input_ids"].to_pylist()]
    assert lengths == [512] * len(expected)
