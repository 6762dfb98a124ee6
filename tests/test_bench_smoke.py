"""Every benchmark under bench/ runs in its smoke mode (tiny sizes, `--smoke`) and prints its ONE
JSON line, so a refactor cannot break a bench unseen (bench/stage.py did, issue 32). The numbers
of a smoke run measure nothing: only that each part ran and reported what it reports.
bench/index_build.py and bench/refit.py carry their own smoke tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _bench(*argv: str, env: dict | None = None, timeout_s: int = 600) -> dict:
    """Run a bench from the repository root; its last stdout line, parsed (it must be JSON)."""
    cmd = [sys.executable, *argv] if argv[0].endswith(".py") else ["bash", *argv]
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "PY": sys.executable, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output; stderr: {proc.stderr[-2000:]}"
    return json.loads(lines[-1])


@pytest.mark.timeout(900)
def test_stage_bench_runs_a_stage_and_broadcasts(tiny_world, ray_local, tmp_path):
    address = ray_local.get_runtime_context().gcs_address
    out = _bench("bench/stage.py", "--smoke", "--address", address, "--keep", str(tmp_path))
    assert out["smoke"] is True and out["stage_samples"] > 0, out
    assert out["overlap_ratio"] > 0 and out["busiest_actor"] in out["actor_busy_s"], out
    assert out["broadcast_actors"] == 2 and out["broadcast_s"] > 0 < out["memcpy_s"], out


@pytest.mark.timeout(600)
def test_entropy_bench_with_vllm_parity(tiny_world):
    out = _bench("bench/entropy.py", "--smoke", "--model-dir", str(tiny_world.model_dir))
    assert out["smoke"] is True and out["vocab"] == 1024, out
    assert 0 <= out["parity_vllm_vs_hf"] < 1e-3, out  # vLLM and HF agree on the test base
    assert out["peak_mem_mb"].keys() == out["naive_peak_mem_mb"].keys() == {"128"}, out
    assert out["tokens_per_s_entropy"] > 0 and out["tokens_per_s_forward"] > 0, out


@pytest.mark.timeout(600)
def test_retrieval_bench_every_variant():
    out = _bench("bench/retrieval.py", "--smoke")
    assert out["smoke"] is True and out["n_vectors"] == 2000, out
    for name in ("ivf", "ivf_pq", "opq_pq", "ivf_pq_rerank", "opq_pq_rerank"):
        assert 0 < out[f"recall_at_10_{name}_vs_flat"] <= 1, (name, out)
    assert out["recall_at_10_ivf_pq_rerank_vs_flat"] >= out["recall_at_10_ivf_pq_vs_flat"], out


@pytest.mark.timeout(600)
def test_pi0_sweep_runs_every_step_kind():
    out = _bench("bench/pi0_sweep.py", "--smoke")
    [(name, recipe)] = out["recipes"].items()
    assert name == "smoke" and out["smoke"] is True and "stopped" not in recipe, out
    phases = [p["phase"] for p in recipe["trajectory"]]
    assert phases == ["induction", "distance", "plain", "text", "mixed"], out
    assert all(p["ppl"] > 1 and "gain256" in p for p in recipe["trajectory"]), out


@pytest.mark.timeout(600)
def test_plan_calibration_reads_the_compare_runs(one_stage_compare):
    from pipelines.driver.compare import method_config

    cfg = one_stage_compare[0]
    runs = [str(method_config(cfg, m, 0).run_dir) for m in ("policylong", "entropylong")]
    out = _bench("bench/plan_calibration.py", *runs)
    assert out["fit_on"] == "policylong-seed0" and out["predicted"] == ["entropylong-seed0"], out
    assert set(out["seconds_per_gflop"]) == {"scorer", "verifier", "trainer"}, out
    assert set(out["relative_error"]) == {"scorer", "verifier", "trainer"}, out


def _no_failed_part(parts: dict) -> None:
    for name, part in parts.items():
        assert not (isinstance(part, dict) and "error" in part), (name, part)


@pytest.mark.timeout(1200)
def test_gpu_smoke_script_on_cpu():
    """bench/gpu_smoke.sh --smoke: every part (entropy at two lengths, FSDP2, combine) in tiny
    shapes on the CPU; a failed part would only be reported in the JSON, so none may be."""
    out = _bench("bench/gpu_smoke.sh", "--smoke", timeout_s=1100)
    assert out["device"] == "cpu", out
    _no_failed_part(out["entropy"])
    _no_failed_part({"fsdp2": out["fsdp2"]})
    assert out["fsdp2"]["loss_finite"] and out["fsdp2"]["full_state_dict"]["ok"], out
    assert all(v["tokens_per_s_entropy"] > 0 for k, v in out["entropy"].items() if k.isdigit())


@pytest.mark.timeout(1500)
def test_gpu_smollm2_script_on_cpu():
    out = _bench("bench/gpu_smollm2.sh", "--smoke", timeout_s=1400)
    _no_failed_part(out["entropy"])
    _no_failed_part(out["train"])
    assert {"16384", "32768"} <= out["train"].keys() and out["estimate"], out
    assert all(out["train"][k]["arch"] == "llama" for k in ("16384", "32768")), out
