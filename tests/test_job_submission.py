"""`ray job submit` as users run it: a real Ray head of its own (`ray start --head`, the job
server on), the test profile submitted with the runtime env in cluster/runtime_env.yaml, run to
SUCCEEDED; its stage manifest and final checkpoint checked; the head stopped again."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import yaml
from one_stage import ONE_STAGE
from ray_head import free_port, start_head, stop_head

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def ray_head():
    """A head node of its own (tests/ray_head.py), the job server on."""
    port, dashboard = free_port(), free_port()
    head = start_head(
        port, "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
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
    stop_head(head)


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
