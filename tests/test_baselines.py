"""The baselines run in the same system: EntropyLong (screen and verify with pi_0 at every stage),
NExtLong (retrieved hard negatives, no verification) and plain concatenation."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.compare import method_config
from pipelines.policylong import run_policylong, stage_dir

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


def test_nextlong_interleaves_unverified_hard_negatives(one_stage_compare):
    cfg = method_config(one_stage_compare[0], "nextlong", 0)  # the compare's one-stage run
    samples = _samples(cfg, 0)
    assert len(samples) == 4 and all(len(s["input_ids"]) == 512 for s in samples)
    for s in samples:
        assert "positive" not in _roles(s) and _roles(s)[-1] == "document"
    assert any("negative" in _roles(s) for s in samples)
    cands = pq.read_table(stage_dir(cfg, 0) / "candidates").to_pylist()
    assert cands and {c["label"] for c in cands} == {"negative"}
    assert all(np.isnan(c["r"]) for c in cands)  # nothing was verified
    manifest = json.loads((stage_dir(cfg, 0) / "stage_manifest.json").read_text())
    assert manifest["actor_busy_s"] == {}  # no scorer, no verifier


def test_concat_is_filler_and_the_document(one_stage_compare):
    cfg = method_config(one_stage_compare[0], "concat", 0)
    samples = _samples(cfg, 0)
    assert len(samples) == 4
    for s in samples:
        assert set(_roles(s)) == {"filler", "document"} and _roles(s)[-1] == "document"
    assert not (stage_dir(cfg, 0) / "candidates").exists()


def test_entropylong_screens_every_stage_with_pi0(baseline_run, tiny_world):
    from actors.hf_backend import HFBackend
    from pipelines.entropy import token_entropies
    from pipelines.ingest import read_docs
    from pipelines.screen import tokenize_docs
    from pipelines.tokenizer import load_tokenizer

    cfg, _ = baseline_run(
        "entropylong",
        "stages.seq_lens=[512, 1024]",
        "stages.rope_thetas=[20000.0, 80000.0]",
        "stages.tokens_per_stage=4096",
        "stages.seed_docs_per_stage=32",
        "screen.batch_docs=4",
        "verify.tau_pos=0.005",
        "verify.tau_neg=0.0",
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
