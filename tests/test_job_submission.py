"""`ray job submit` as users run it: a real Ray head of its own (`ray start --head`, the job
server on), the test profile submitted with the runtime env in cluster/runtime_env.yaml, run to
SUCCEEDED; its stage manifest and final checkpoint checked; the head stopped again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from one_stage import ONE_STAGE

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A head node of its own (its own ports and temp dir: the suite's Ray is untouched);
    `--block` ties every process of the node to this one, so stopping it stops them all."""
    port, dashboard = _free_port(), _free_port()
    # Every port of its own: the suite's Ray already holds the defaults (e.g. the dashboard
    # agent's 52365), and a second node on them fails to start its job agent.
    own = [
        f"--{flag}={_free_port()}"
        for flag in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
            "runtime-env-agent-port", "node-manager-port", "object-manager-port",
            "ray-client-server-port",
        )
    ]  # fmt: skip
    temp = tempfile.mkdtemp(prefix="rayhead", dir="/tmp")  # short: Ray's socket paths are capped
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}", "RAY_ADDRESS": ""}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", f"--temp-dir={temp}", "--disable-usage-stats", *own],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    from ray.job_submission import JobSubmissionClient

    address, deadline = f"http://127.0.0.1:{dashboard}", time.monotonic() + 120
    while True:
        try:
            client = JobSubmissionClient(address)
            break
        except Exception:
            assert head.poll() is None, head.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the head's job server did not come up"
            time.sleep(1)
    yield client
    os.killpg(head.pid, signal.SIGTERM)
    head.wait(timeout=60)


@pytest.mark.timeout(900)
def test_ray_job_submit_runs_the_test_profile_to_completion(ray_head, tmp_path):
    from ray.job_submission import JobStatus
    from transformers import AutoModelForCausalLM

    runtime_env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    runtime_env["working_dir"] = str(REPO)
    sets = [
        f"run.output_dir={tmp_path}",  # absolute: the job runs in its own copy of the code
        f"run.cache_dir={REPO / 'runs' / 'cache'}",
        "run.name=submitted",
        "stages.method=concat",
        *ONE_STAGE,
    ]
    entrypoint = "policylong run --config configs/test.yaml " + " ".join(
        f"--set '{s}'" for s in sets
    )
    job = ray_head.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    deadline = time.monotonic() + 600
    while not (status := ray_head.get_job_status(job)).is_terminal():
        assert time.monotonic() < deadline, ray_head.get_job_logs(job)[-3000:]
        time.sleep(2)
    logs = ray_head.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    stage = tmp_path / "submitted" / "stages" / "stage_0"
    assert (stage / "stage_manifest.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(str(stage / "model"))
    assert model.config.rope_parameters["rope_theta"] == 20000.0
    assert '"method": "concat"' in logs and "run finished" in logs  # the driver's own summary
