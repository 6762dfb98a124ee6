"""bench/gpu_issue30.sh (issue 30 item 3's GPU checks) parses, explains itself, and in its smoke
mode (tiny shapes on CPU) runs every part and prints ONE JSON line holding each part's result:
so the prepared GPU script cannot break unseen before a session with a GPU runs it. The smoke
numbers measure nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = ["entropy_32k", "entropy_128k", "fused_32k", "fused_128k"]
PARTS += ["fsdp2_32k", "fsdp2_64k", "fsdp2_128k", "transfer"]
pytestmark = pytest.mark.slow


@pytest.mark.timeout(60)
def test_script_parses_and_prints_its_help():
    script = "bench/gpu_issue30.sh"
    assert subprocess.run(["bash", "-n", script], cwd=REPO).returncode == 0
    out = subprocess.run(["bash", script, "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and "Qwen2.5-3B" in out.stdout and "LIGER_DIR" in out.stdout
    bad = subprocess.run(["bash", script, "--bogus"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "--help" in bad.stderr


@pytest.mark.timeout(1200)
def test_smoke_runs_every_part(tmp_path):
    proc = subprocess.run(
        ["bash", "bench/gpu_issue30.sh", "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1100,
        env={**os.environ, "PY": sys.executable, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == json.loads((tmp_path / "gpu_issue30.json").read_text())
    assert out["tiny"] is True
    for name in PARTS:
        assert "error" not in out[name], (name, out[name])
    for name in ("fused_32k", "fused_128k"):  # exact on the tiny shape: the current path and
        for variant in ("current_tf32", "triton_fused"):  # our Triton kernel (interpreter)
            row = out[name][variant]
            assert row["exact_1e-5"] and row["max_err_vs_float64"] <= 1e-5, (variant, row)
    for name in ("fsdp2_32k", "fsdp2_64k", "fsdp2_128k"):
        assert out[name]["loss_finite"] and out[name]["tokens_per_s"] > 0, out[name]
        assert "train_strategy.FSDP2Strategy" in out[name]["strategy"], out[name]
    assert out["transfer"]["gloo"]["delivered"] is True, out["transfer"]
