"""`policylong construct` (stages.train false): every stage's data is built with pi_0, nothing is
trained, and each stage's dataset is exported with its card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from one_stage import COMPARE

from pipelines.cli import main
from pipelines.driver.stage_driver import stage_dir

pytestmark = pytest.mark.slow


def _snapshot(run_dir: Path) -> dict[str, str]:
    """sha256 of every file a stage wrote: its samples, manifests and exported dataset."""
    files = [p for d in ("stages", "dataset") for p in (run_dir / d).rglob("*") if p.is_file()]
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_construct_builds_every_stage_with_pi_0_and_trains_nothing(
    load_test_profile, tiny_world, ray_local, tmp_path, capsys
):
    import datasets
    import yaml

    stages = ["stages.seq_lens=[512, 1024]", "stages.rope_thetas=[20000.0, 80000.0]"]
    cfg = load_test_profile(
        "run.name=construct-only", "stages.method=policylong", *COMPARE, *stages
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    assert main(["construct", "--config", str(tmp_path / "config.yaml")]) == 0
    for k in range(2):
        manifest = json.loads((stage_dir(cfg, k) / "stage_manifest.json").read_text())
        assert manifest["model_dir"] is None and manifest["broadcast"] is None
        assert not (stage_dir(cfg, k) / "model").exists()  # nothing trained
        rows = datasets.load_dataset(
            "parquet", data_files=str(cfg.run_dir / "dataset" / f"stage_{k}" / "*.parquet")
        )["train"]
        committed = json.loads((stage_dir(cfg, k) / "samples" / "manifest.json").read_text())
        assert 0 < len(rows) == committed["samples"]
        assert set(rows["policy_version"]) == {0}  # pi_0 screened and verified both stages
        assert all(len(ids) == cfg.stages.seq_lens[k] for ids in rows["input_ids"])
    # The rerun resumes: every stage is complete, so it does no work and rewrites nothing.
    before = _snapshot(cfg.run_dir)
    capsys.readouterr()
    assert main(["construct", "--config", str(tmp_path / "config.yaml")]) == 0
    assert json.loads(capsys.readouterr().out)["new_work"] is False
    assert _snapshot(cfg.run_dir) == before and len(before) > 8
