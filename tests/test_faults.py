"""Failure propagation: a paper step that raises fails the run in bounded time with one line
naming the stage, the step and the cause; nothing half-done looks complete; a rerun resumes.
(The fault is injected with a patched function: the only mock the suite allows.)"""

from __future__ import annotations

import json

import pytest
from one_stage import ONE_STAGE

import pipelines.construct
from pipelines.errors import StageFailed
from pipelines.policylong import run_policylong, stage_dir

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_a_step_that_raises_fails_the_run_in_one_line_and_a_rerun_resumes(
    load_test_profile, tiny_world, ray_local, monkeypatch
):
    # concat: no scorer or verifier to start, the fault is what is tested
    cfg = load_test_profile("run.name=fault-assemble", "stages.method=concat", *ONE_STAGE)

    def broken(*args, **kwargs):
        raise ValueError("injected fault")

    monkeypatch.setattr(pipelines.construct, "assemble_sample", broken)
    with pytest.raises(StageFailed) as failure:  # not a hang: the test's timeout guards that
        run_policylong(cfg)
    message = str(failure.value)
    assert message.startswith("stage 0 failed in assemble: ValueError: injected fault;")
    assert "\n" not in message and "rerun" in message
    samples = stage_dir(cfg, 0) / "samples"
    assert json.loads((samples / "failed.json").read_text())["reason"].startswith("assemble:")
    assert not (samples / "manifest.json").exists()  # construction is not marked complete
    assert not (stage_dir(cfg, 0) / "stage_manifest.json").exists()

    monkeypatch.undo()
    result = run_policylong(cfg)  # the same command, the fault gone: the stage completes
    assert result["new_work"] and (stage_dir(cfg, 0) / "stage_manifest.json").is_file()
    assert not (samples / "failed.json").exists()
