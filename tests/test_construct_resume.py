"""A construction killed mid-stage and rerun, or one whose actors crash mid-stage, commits
exactly what an uninterrupted one does."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.core.records import Stage
from pipelines.core.sample_log import SampleLog
from pipelines.driver import construct

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stage_ctx(load_test_profile, tiny_world, ray_local):
    from pipelines.core.methods import method_spec
    from pipelines.driver.fleet import Fleet
    from pipelines.driver.stage_driver import seed_share
    from pipelines.steps.screen import tokenize_docs
    from pipelines.world.build_index import build_index, cached_index_dir
    from pipelines.world.ingest import read_docs
    from pipelines.world.tokenizer import load_tokenizer

    cfg = load_test_profile(
        "run.name=resume",
        "screen.batch_docs=3",
        "stages.batches_in_flight=2",
    )
    tok = load_tokenizer(tiny_world.model_dir)
    index = build_index(
        cached_index_dir(cfg.index, cfg.run.cache_dir, tiny_world.corpus_dir, tiny_world.model_dir),
        tiny_world.corpus_dir,
        tiny_world.model_dir,
        cfg.index,
    )
    docs = tokenize_docs(tok, read_docs(tiny_world.corpus_dir, "train"), cfg.screen.max_doc_tokens)
    with Fleet(cfg, method_spec("policylong"), index.index_dir) as fleet:
        fleet.start(tiny_world.model_dir, 0)

        def make(stage_dir: Path) -> construct.StageContext:
            return construct.StageContext(cfg, Stage.of(cfg.stages, 0, 0), stage_dir, fleet, tok)

        yield make, seed_share(cfg, docs, 0)[:24], fleet


def _ids(stage_dir: Path) -> list[str]:
    log = SampleLog(stage_dir / "samples")
    return [i for c in log.commits() for i in log.read(c.name)["sample_id"].to_pylist()]


BUDGET = 10**6  # never reached: every batch is built, whatever number of positives pi_0 finds


@pytest.fixture(scope="module")
def clean_ids(stage_ctx, tmp_path_factory) -> list[str]:
    """The sample ids of an undisturbed construction."""
    make, seeds, _ = stage_ctx
    out = tmp_path_factory.mktemp("clean")
    construct.construct_stage(make(out), seeds, BUDGET)
    ids = _ids(out)
    assert ids, "pi_0 verified no positive in the seed documents: nothing to compare"
    return ids


def test_killed_and_rerun_stage_commits_the_same_samples(
    stage_ctx, clean_ids, tmp_path, monkeypatch
):
    """The kill comes at the second commit (one batch is durable, the rest is not)."""
    make, seeds, _ = stage_ctx
    budget, expected = BUDGET, clean_ids

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


def test_crashed_actors_are_restarted_and_the_stage_commits_the_same_samples(
    stage_ctx, clean_ids, tmp_path, monkeypatch
):
    """A scorer, a verifier, a retrieval shard and the embedder each crash mid-stage (killed
    with a restart allowed, as a dying process would be): Ray restarts them, the calls in
    flight are redone, and the committed samples are an undisturbed run's."""
    import ray

    make, seeds, fleet = stage_ctx
    retriever = fleet.retriever
    # At commit c, batches c+1 and c+2 are in flight (stages.batches_in_flight=2).
    victims = {
        1: [fleet.scorers[0]],
        2: [fleet.verifiers[0]],
        3: [retriever.shards[0], retriever.embedder],
    }
    all_victims = [a for group in victims.values() for a in group]
    pids = ray.get([a.pid.remote() for a in all_victims])
    real, calls = construct._commit, []

    def crash_at_commits(ctx, log, result, room):
        calls.append(result.name)
        for actor in victims.get(len(calls), []):
            ray.kill(actor, no_restart=False)  # the process dies; Ray may restart it
        return real(ctx, log, result, room)

    monkeypatch.setattr(construct, "_commit", crash_at_commits)
    construct.construct_stage(make(tmp_path / "crashed"), seeds, BUDGET)
    assert len(calls) >= 5, calls  # every crash happened while batches were still in flight
    assert _ids(tmp_path / "crashed") == clean_ids
    after = ray.get([a.pid.remote() for a in all_victims])
    assert all(a != b for a, b in zip(pids, after, strict=True)), (pids, after)
