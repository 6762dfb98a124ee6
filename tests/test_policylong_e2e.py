"""PolicyLong end to end: two tiny stages on local Ray with real actors, Ray Train and FAISS.

The run is disturbed the way a preemptible cluster disturbs it: a train worker's process is
killed (SIGKILL) mid-stage. Ray Train restarts the group from the last checkpoint, and every
claim below must still hold."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fault_injection import construction_held_until_trained, train_worker_killed_at_step
from one_stage import run_command

from pipelines.driver.stage_driver import run_policylong, stage_dir

pytestmark = pytest.mark.slow

E2E_OVERRIDES = [
    "run.name=e2e",
    "stages.method=policylong",
    "stages.seq_lens=[512, 1024]",
    "stages.rope_thetas=[20000.0, 80000.0]",
    "stages.tokens_per_stage=12288",  # 24 samples at 512, 12 at 1024
    "stages.seed_docs_per_stage=96",
    "screen.batch_docs=4",
    "resources.trainer.count=2",
    "train.checkpoint_every=2",
]


# Stage 1 trains ~6 steps (about 12 samples verified), a checkpoint every 2. (Stage 0 stays
# undisturbed: a restart rewrites the ledger's times, and stage 0 shows the streaming overlap.)
# Rank 0 is the one that logs, writes the checkpoint and reports to Ray Train (tests/
# test_train_fsdp2.py kills rank 1).
KILL_STAGE, KILL_AT_STEP, KILL_RANK = 1, 3, 0


@pytest.fixture(scope="module")
def e2e(load_test_profile, tiny_world, ray_local):
    cfg = load_test_profile(*E2E_OVERRIDES)
    train = stage_dir(cfg, KILL_STAGE) / "train"
    with (
        pytest.MonkeyPatch.context() as mp,
        construction_held_until_trained(mp, stage_dir(cfg, 0) / "train", 0),
        train_worker_killed_at_step(train, KILL_AT_STEP, KILL_RANK) as killed,
    ):
        result = run_policylong(cfg)
    return cfg, result | {"killed_train_worker": killed}


def _ledger(cfg, k: int) -> list[dict]:
    rows = []
    for f in sorted((stage_dir(cfg, k) / "train").glob("rank*.jsonl")):
        rows += [json.loads(x) for x in f.read_text().splitlines()]
    return rows


def _samples(cfg, k: int, columns: list[str] | None = None) -> list[dict]:
    files = sorted((stage_dir(cfg, k) / "samples").glob("shard-*.parquet"))
    return [row for f in files for row in pq.read_table(f, columns=columns).to_pylist()]


def _logged_ids(cfg, k: int) -> list[str]:
    return [row["sample_id"] for row in _samples(cfg, k, ["sample_id"])]


def test_every_logged_sample_is_trained_exactly_once(e2e):
    cfg, _ = e2e
    for k in range(2):
        logged = _logged_ids(cfg, k)
        trained = [r["sample_id"] for r in _ledger(cfg, k)]
        assert logged, f"stage {k} committed no sample"
        assert sorted(trained) == sorted(logged)
        assert len(set(trained)) == len(trained)


def test_a_killed_train_worker_is_replaced_and_resumes_from_the_checkpoint(e2e):
    cfg, result = e2e
    [killed] = result["killed_train_worker"]  # the kill happened mid-stage
    train = stage_dir(cfg, KILL_STAGE) / "train"
    assert int((train / f"rank{KILL_RANK}.pid").read_text()) != killed  # a new process took it
    steps = [json.loads(x)["step"] for x in (train / "train_log.jsonl").read_text().splitlines()]
    manifest = stage_dir(cfg, KILL_STAGE) / "samples" / "manifest.json"
    samples = json.loads(manifest.read_text())["samples"]
    assert steps == list(range(-(-samples // 2)))  # each step once: redone steps replaced
    assert len(steps) > KILL_AT_STEP + 1  # the kill came mid-stage, with steps still to do


def test_training_consumed_samples_before_construction_finished(e2e):
    # stage 0 is not disturbed (its ledger keeps the first steps' times), only slowed: its
    # construction waits for a first trained step (construction_held_until_trained)
    cfg, _ = e2e
    finished = json.loads((stage_dir(cfg, 0) / "samples" / "manifest.json").read_text())
    first_trained = min(r["t"] for r in _ledger(cfg, 0))
    assert first_trained < finished["finished_at"]


def test_stage_two_actors_hold_the_stage_one_checkpoint(e2e):
    cfg, result = e2e
    [sync] = result["broadcasts"]
    assert sync["version"] == 1 and sync["actors"] == 2
    assert sync["probe_max_diff"] <= 1e-4
    manifest = json.loads((stage_dir(cfg, 1) / "stage_manifest.json").read_text())
    assert manifest["policy_version_used"] == 1
    assert {row["policy_version"] for row in _samples(cfg, 1, ["policy_version"])} == {1}


def test_stage_checkpoints_load_with_raised_rope_base(e2e):
    from transformers import AutoModelForCausalLM

    cfg, _ = e2e
    for k, theta in enumerate([20000.0, 80000.0]):
        model = AutoModelForCausalLM.from_pretrained(str(stage_dir(cfg, k) / "model"))
        assert model.config.rope_parameters["rope_theta"] == theta


def test_samples_are_exact_length_with_verified_positives(e2e):
    cfg, _ = e2e
    for k, seq_len in enumerate([512, 1024]):
        for row in _samples(cfg, k):
            assert len(row["input_ids"]) == seq_len
            roles = [s["role"] for s in row["segments"]]
            assert roles[-1] == "document" and "positive" in roles
            assert all(
                s["r"] >= cfg.verify.tau_pos for s in row["segments"] if s["role"] == "positive"
            )


def test_report_has_plots_and_cross_stage_page(e2e):
    cfg, result = e2e
    report = Path(result["report"])
    text = report.read_text()
    assert "Across stages" in text and "stage_1" in text
    for k in range(2):
        for png in ("entropy_hist.png", "verification.png", "train_loss.png"):
            assert (stage_dir(cfg, k) / png).stat().st_size > 1000
        summary = json.loads((stage_dir(cfg, k) / "summary.json").read_text())
        assert summary["r_p10"] <= summary["r_median"] <= summary["r_p90"] <= summary["r_p99"]


def test_positives_carry_their_anchor_and_chunk_text_into_the_report(e2e):
    """A reader judges a dependency from the anchor token in context and the chunk that lowered
    its entropy: positives keep both (decoded), other candidates keep neither."""
    cfg, result = e2e
    files = sorted((stage_dir(cfg, 0) / "candidates").glob("*.parquet"))
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    positives = [r for r in rows if r["label"] == "positive"]
    assert positives
    for r in positives:
        assert r["anchor_text"].endswith("]]") and "[[" in r["anchor_text"]
        assert r["chunk_text"].strip()
    assert all(r["anchor_text"] == r["chunk_text"] == "" for r in rows if r not in positives)
    text = Path(result["report"]).read_text()
    assert f"Example positives ({min(5, len(positives))} of {len(positives)}" in text


def test_rerun_of_finished_command_does_no_new_work(e2e):
    cfg, _ = e2e
    before = {k: (_logged_ids(cfg, k), len(_ledger(cfg, k))) for k in range(2)}
    again = run_policylong(cfg)
    assert again["new_work"] is False
    assert {k: (_logged_ids(cfg, k), len(_ledger(cfg, k))) for k in range(2)} == before


@pytest.mark.timeout(900)
def test_a_driver_killed_between_stages_and_rerun_continues_where_it_stopped(
    e2e, tmp_path, ray_local
):
    """`policylong run` (its own process, joined to the test's Ray) killed with SIGKILL as soon
    as stage 0 is complete: the same command rerun keeps stage 0 as it was (nothing redone),
    runs stage 1 from stage 0's checkpoint, trains every sample once, and commits exactly the
    samples of the e2e run, whose stage 1 construction was undisturbed (only its training was)."""
    import dataclasses
    import hashlib
    import os
    import signal
    import subprocess
    import time

    from transformers import AutoModelForCausalLM

    reference, _ = e2e
    run = dataclasses.replace(reference.run, output_dir=str(tmp_path), name="killed-between")
    address = ray_local.get_runtime_context().gcs_address
    cluster = dataclasses.replace(reference.cluster, address=address)
    cfg = dataclasses.replace(reference, run=run, cluster=cluster)
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "corpus").symlink_to(reference.run_dir / "corpus")  # no second ingest
    command = run_command(cfg, tmp_path)
    repo = Path(__file__).resolve().parents[1]
    done_0 = stage_dir(cfg, 0) / "stage_manifest.json"

    driver = subprocess.Popen(command, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not done_0.exists() and driver.poll() is None:
        assert time.monotonic() < deadline, "stage 0 did not finish in 10 minutes"
        time.sleep(0.05)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    assert driver.returncode == -signal.SIGKILL  # killed, not finished on its own
    assert not (stage_dir(cfg, 1) / "stage_manifest.json").exists()  # between the stages

    def stage_0_files() -> dict[str, str]:  # its data, checkpoint, ledger and manifest
        parts = ("samples", "model", "train", "stage_manifest.json")
        files = sorted(
            p
            for x in parts
            for p in [stage_dir(cfg, 0) / x, *(stage_dir(cfg, 0) / x).rglob("*")]
            if p.is_file()
        )
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    before = stage_0_files()
    rerun = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert stage_0_files() == before  # stage 0 was not redone
    for k in range(2):
        assert _logged_ids(cfg, k) == _logged_ids(reference, k)
        trained = [r["sample_id"] for r in _ledger(cfg, k)]
        assert sorted(trained) == sorted(_logged_ids(cfg, k)) and len(set(trained)) == len(trained)
    manifest = json.loads((stage_dir(cfg, 1) / "stage_manifest.json").read_text())
    assert manifest["policy_version_used"] == 1
    final = AutoModelForCausalLM.from_pretrained(str(stage_dir(cfg, 1) / "model"))
    assert final.config.rope_parameters["rope_theta"] == 80000.0


def test_each_stage_is_exported_as_a_dataset_that_loads_with_its_provenance(e2e):
    import datasets

    from pipelines.core.sample_log import SampleLog

    cfg, _ = e2e
    for k in range(2):
        folder = cfg.run_dir / "dataset" / f"stage_{k}"
        rows = datasets.load_dataset("parquet", data_files=str(folder / "*.parquet"))["train"]
        log = SampleLog(stage_dir(cfg, k) / "samples")
        in_commit_order = [
            i for c in log.commits() for i in log.read(c.name)["sample_id"].to_pylist()
        ]
        assert rows["sample_id"] == in_commit_order  # every committed sample, as trained
        first = rows[0]
        assert first["seq_len"] == len(first["input_ids"]) and first["policy_version"] == k
        assert first["text"] and first["n_positives"] >= 1 and first["method"] == "policylong"
        card = (folder / "README.md").read_text()
        assert f'"tau_pos": {cfg.verify.tau_pos}' in card and f'"policy_version": {k}' in card


def _model(model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


def test_stage_one_screens_and_verifies_with_pi1_not_pi0(e2e, tiny_world):
    """The method's claim, recomputed here in float64 from the saved checkpoints' full logits
    (no actor, no tiled kernel): stage 1's screening entropies and its verifier's r are pi_1's,
    and pi_0's differ from them by a wide margin."""
    import numpy as np

    from pipelines.eval.onpolicy_shift import entropies, verifier_r
    from pipelines.steps.screen import tokenize_docs
    from pipelines.world.ingest import read_docs
    from pipelines.world.tokenizer import load_tokenizer

    cfg, _ = e2e
    pi0, pi1 = _model(tiny_world.model_dir), _model(stage_dir(cfg, 0) / "model")
    tok = load_tokenizer(tiny_world.model_dir)
    docs = tokenize_docs(tok, read_docs(tiny_world.corpus_dir, "train"), cfg.screen.max_doc_tokens)
    ids = {d["doc_id"]: d["input_ids"] for d in docs}
    screened = pq.read_table(stage_dir(cfg, 1) / "screen").to_pylist()[:4]
    gaps = []
    for row in screened:
        doc = ids[row["doc_id"]][: row["n_tokens"]]
        logged = np.asarray(row["entropy"], dtype=np.float64)[1:]
        under_pi1, under_pi0 = entropies(pi1, doc)[1:], entropies(pi0, doc)[1:]
        assert np.abs(logged - under_pi1).max() <= 1e-4, row["doc_id"]
        gaps.append(np.abs(logged - under_pi0).mean())
    assert min(gaps) > 0.05, gaps  # pi_0's entropies are far from what stage 1 used

    chunks = _chunk_tokens(cfg)
    cands = pq.read_table(stage_dir(cfg, 1) / "candidates").to_pylist()[:6]
    assert cands
    r_gap = []
    for c in cands:
        chunk, doc, pos = chunks[c["chunk_id"]], ids[c["doc_id"]], c["positions"]
        assert abs(verifier_r(pi1, chunk, doc, pos) - c["r"]) <= 1e-4, c["chunk_id"]
        r_gap.append(abs(verifier_r(pi0, chunk, doc, pos) - c["r"]))
    assert max(r_gap) > 1e-3, r_gap


def _chunk_tokens(cfg) -> dict[str, list[int]]:
    """chunk_id -> token ids, read from the run's index."""
    from pipelines.core.index_format import chunk_column
    from pipelines.world.build_index import cached_index_dir
    from pipelines.world.world import ensure_world

    world = ensure_world(cfg)
    return chunk_column(
        cached_index_dir(cfg.index, cfg.run.cache_dir, world.corpus_dir, world.model_dir),
        "input_ids",
    )
