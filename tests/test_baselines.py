"""The baselines run in the same system, each as its paper describes it (README "Methods"):
EntropyLong ([C_pi(1..m); D] units from pi_0's verified contexts), NExtLong (meta-chunks each
followed by their nearest chunks of other documents, no model), plain concatenation, and the
static ablation (PolicyLong's assembly with pi_0 screening every stage)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.driver.compare import method_config
from pipelines.driver.stage_driver import run_policylong, stage_dir

pytestmark = pytest.mark.slow


def _samples(cfg, k: int) -> list[dict]:
    files = sorted((stage_dir(cfg, k) / "samples").glob("shard-*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def _roles(sample: dict) -> list[str]:
    return [seg["role"] for seg in sample["segments"]]


@pytest.fixture(scope="module")
def baseline_run(load_test_profile, tiny_world, ray_local):
    def run(method: str, *extra: str):
        cfg = load_test_profile(f"run.name=baseline-{method}", f"stages.method={method}", *extra)
        return cfg, run_policylong(cfg)

    return run


def _chunk_owners(cfg) -> dict[str, str]:
    """chunk_id -> the document it was cut from, read from the run's index."""
    from pipelines.core.index_format import chunk_column
    from pipelines.world.build_index import cached_index_dir
    from pipelines.world.world import ensure_world

    world = ensure_world(cfg)
    return chunk_column(
        cached_index_dir(cfg.index, cfg.run.cache_dir, world.corpus_dir, world.model_dir), "doc_id"
    )


def test_nextlong_alternates_meta_chunks_and_their_unreused_negatives(one_stage_compare):
    cfg = method_config(one_stage_compare[0], "nextlong", 0)  # the compare's one-stage run
    samples = _samples(cfg, 0)
    assert len(samples) == 4 and all(len(s["input_ids"]) == 512 for s in samples)
    owner = _chunk_owners(cfg)
    for s in samples:
        roles = _roles(s)
        assert roles[0] == "meta_chunk" and set(roles) == {"meta_chunk", "negative"}
        metas = [seg for seg in s["segments"] if seg["role"] == "meta_chunk"]
        assert len(metas) >= 2  # the document really is split, negatives between its parts
        offsets = [seg["offset"] for seg in metas]  # its meta-chunks in document order, abutting
        assert offsets == [0] + [m["offset"] + m["length"] for m in metas[:-1]]
        negatives = [seg["chunk_id"] for seg in s["segments"] if seg["role"] == "negative"]
        assert len(negatives) == len(set(negatives))  # none reused
        assert all(owner[c] != s["seed_doc_id"] for c in negatives)  # none of its own document
    assert not (stage_dir(cfg, 0) / "candidates").exists()  # nothing was verified
    manifest = json.loads((stage_dir(cfg, 0) / "stage_manifest.json").read_text())
    assert manifest["actor_busy_s"] == {}  # no scorer, no verifier


def test_entropylong_samples_hold_verified_contexts_and_documents_only(one_stage_compare):
    cfg = method_config(one_stage_compare[0], "entropylong", 0)
    samples = _samples(cfg, 0)
    assert samples and all(len(s["input_ids"]) == 512 for s in samples)
    for s in samples:
        assert set(_roles(s)) <= {"positive", "document"}  # no negative, no filler
        assert _roles(s)[-1] == "document"
        assert "positive" in _roles(s)


def test_every_anchor_of_every_committed_sample_is_in_its_document_segment(one_stage_compare):
    """Stage 0 of 512 tokens keeps 256 document tokens; the test documents are longer (up to
    screen.max_doc_tokens 512), so this fails if screening scores more than the sample holds."""
    from pipelines.steps.assemble import anchors_kept

    base = one_stage_compare[0]
    for method in ("policylong", "policylong_static", "entropylong"):
        cfg = method_config(base, method, 0)
        screened = pq.read_table(stage_dir(cfg, 0) / "screen").to_pylist()
        assert max(r["n_tokens"] for r in screened) == 256  # the window, not max_doc_tokens
        total = kept = 0
        for s in _samples(cfg, 0):
            t, k = anchors_kept(s["segments"])
            total, kept = total + t, kept + k
        assert total and kept == total, (method, kept, total)
        counts = json.loads((stage_dir(cfg, 0) / "stage_manifest.json").read_text())
        counts = counts["construction"]
        assert counts["anchors"] == total and counts["anchors_in_sample"] == total


def test_concat_is_filler_and_the_document(one_stage_compare):
    cfg = method_config(one_stage_compare[0], "concat", 0)
    samples = _samples(cfg, 0)
    assert len(samples) == 4
    for s in samples:
        assert set(_roles(s)) == {"filler", "document"} and _roles(s)[-1] == "document"
    assert not (stage_dir(cfg, 0) / "candidates").exists()


@pytest.mark.timeout(1500)  # a two-stage run of its own (the compare's are one stage)
def test_the_static_ablation_screens_every_stage_with_pi0(baseline_run, tiny_world):
    from actors.hf_backend import HFBackend
    from pipelines.core.entropy import token_entropies
    from pipelines.steps.screen import tokenize_docs
    from pipelines.world.ingest import read_docs
    from pipelines.world.tokenizer import load_tokenizer

    cfg, _ = baseline_run(
        "policylong_static",
        "stages.seq_lens=[512, 1024]",
        "stages.rope_thetas=[20000.0, 80000.0]",
        "stages.tokens_per_stage=4096",
        "stages.seed_docs_per_stage=32",
        "screen.batch_docs=4",
    )
    stage1 = _samples(cfg, 1)
    assert stage1 and {s["policy_version"] for s in stage1} == {0}
    assert (stage_dir(cfg, 1) / "model" / "config.json").is_file()  # training still advanced
    screened = pq.read_table(stage_dir(cfg, 1) / "screen").to_pylist()
    with_positions = [r for r in screened if r["positions"]]
    assert with_positions, f"pi_0 selected no position in {len(screened)} screened documents"
    row = with_positions[0]
    tok = load_tokenizer(tiny_world.model_dir)
    docs = tokenize_docs(tok, read_docs(tiny_world.corpus_dir, "train"), cfg.screen.max_doc_tokens)
    ids = next(d["input_ids"] for d in docs if d["doc_id"] == row["doc_id"])

    def at_positions(model_dir) -> np.ndarray:
        backend = HFBackend(model_dir)
        h = backend.hidden_states([ids])[0]
        return token_entropies(h, backend.lm_head_weight(), 256)[row["positions"]].numpy()

    logged = np.asarray(row["position_entropies"])
    assert np.abs(logged - at_positions(tiny_world.model_dir)).max() < 1e-4  # pi_0's values
    assert np.abs(logged - at_positions(stage_dir(cfg, 0) / "model")).max() > 1e-3  # not pi_1's
