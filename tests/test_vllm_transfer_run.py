"""Two PolicyLong stages with a vLLM scorer and stages.weight_transport 'collective' (issue 30):
stage 0 trains pi_1 (RoPE base raised 2e4 -> 8e4 for stage 1), the broadcast pushes it into the
running vLLM engine through vLLM's weight-transfer API (gloo on CPU) without a restart, the HF
verifier gets it over the plain collective, and stage 1's logged screening entropies are HF
pi_1's. The vLLM scorer is killed in stage 1, before its second batch (issue 32 item 6): Ray
restarts it with its first constructor arguments (pi_0), and it must come back holding pi_1, so
every document of stage 1, those screened after the restart included, carries pi_1's entropies."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from fault_injection import scorer_killed_mid_stage

from pipelines.driver.stage_driver import run_policylong, stage_dir

pytestmark = pytest.mark.slow

OVERRIDES = [
    "run.name=vllm-transfer",
    "stages.method=policylong",
    "stages.seq_lens=[512, 1024]",
    "stages.rope_thetas=[20000.0, 80000.0]",
    "stages.tokens_per_stage=4096",  # 8 samples at 512, 4 at 1024: stage 1 screens after the kill
    "stages.seed_docs_per_stage=24",
    "screen.batch_docs=4",
    "screen.backend=vllm",
    "stages.weight_transport=collective",
    # one trainer at a quarter CPU: in the full suite something earlier kept 0.5 of the 2 CPUs
    # (CI, twice: "only 0.55 of 2 CPU free"; tests/ray_leaks.py names what it can see)
    "resources.trainer.count=1",
    "resources.trainer.cpus=0.25",
]


@pytest.fixture(scope="module")
def run(load_test_profile, tiny_world, ray_local):
    cfg = load_test_profile(*OVERRIDES)
    with pytest.MonkeyPatch.context() as mp, scorer_killed_mid_stage(mp, 1) as killed:
        result = run_policylong(cfg)
    return cfg, result | {"killed_scorer": killed}


def _hf_entropies(model_dir, ids: list[int]) -> np.ndarray:
    from actors.hf_backend import HFBackend
    from pipelines.core.entropy import token_entropies

    backend = HFBackend(model_dir)
    h = backend.hidden_states([ids])[0]
    return token_entropies(h, backend.lm_head_weight(), 256, compiled=False).numpy()


@pytest.mark.timeout(2400)
def test_pi1_reaches_the_vllm_scorer_in_place(run):
    cfg, result = run
    [sync] = result["broadcasts"]
    assert sync["version"] == 1 and sync["actors"] == 2, sync
    # the scorer's engine over vLLM's API, the HF verifier over the plain collective
    assert sorted(sync["transports"]) == ["collective", "vllm_gloo"], sync
    assert sync["engine_restarts"] == 0 and sync["probe_max_diff"] <= 1e-4, sync


@pytest.mark.timeout(2400)
def test_stage_one_screens_with_hf_pi1_entropies(run, tiny_world):
    from pipelines.steps.screen import tokenize_docs
    from pipelines.world.ingest import read_docs
    from pipelines.world.tokenizer import load_tokenizer

    cfg, result = run
    pi0, pi1 = tiny_world.model_dir, stage_dir(cfg, 0) / "model"
    docs = read_docs(tiny_world.corpus_dir, "train")
    tokens = tokenize_docs(load_tokenizer(pi0), docs, cfg.screen.max_doc_tokens)
    ids = {d["doc_id"]: d["input_ids"] for d in tokens}
    screened = pq.read_table(stage_dir(cfg, 1) / "screen").to_pylist()
    assert screened
    gaps = []
    for row in screened:
        doc = ids[row["doc_id"]][: row["n_tokens"]]
        logged = np.asarray(row["entropy"], dtype=np.float64)[1:]
        assert np.abs(logged - _hf_entropies(pi1, doc)[1:]).max() <= 1e-4, row["doc_id"]
        gaps.append(np.abs(logged - _hf_entropies(pi0, doc)[1:]).mean())
    assert min(gaps) > 0.05, gaps  # pi_0's entropies are far from what stage 1 used


@pytest.mark.timeout(2400)
def test_a_vllm_scorer_killed_mid_stage_comes_back_with_pi1(run):
    """The kill happened in stage 1 and the restarted engine screened committed documents (their
    entropies are checked against HF pi_1 above, every one of them)."""
    cfg, result = run
    killed = result["killed_scorer"]
    assert killed["killed_pid"], "the scorer was never killed: stage 1 screened one batch only"
    committed = {r["doc_id"] for r in pq.read_table(stage_dir(cfg, 1) / "screen").to_pylist()}
    assert committed & set(killed["docs_after"]), (sorted(committed), killed)
