"""`policylong compare` end to end on the test profile with tiny budgets: every method from one
pi_0, every final checkpoint evaluated, the loss gap measured in sample and out of sample,
compare.md and compare.png written, each run's results kept as a file, and a rerun reuses all of
it, even with runs/ gone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.core.config import METHODS
from pipelines.driver.compare import compare, compare_dir
from pipelines.eval.eval_tasks import TASKS

pytestmark = pytest.mark.slow


def test_compare_runs_every_method_from_one_pi0_and_writes_its_report(
    one_stage_compare, tiny_world
):
    cfg, result = one_stage_compare
    out = compare_dir(cfg)
    md = Path(result["compare_md"]).read_text()
    for method in METHODS:
        assert f"| {method} |" in md
    assert "Cost of being on-policy" in md and "## Loss gap per stage, in sample" in md
    assert "## Loss gap per stage, out of sample" in md
    assert "## PolicyLong minus each method, paired by seed" in md
    assert Path(result["compare_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    runs = json.loads((out / "compare.json").read_text())
    pi0 = str(tiny_world.model_dir)
    for method in METHODS:
        run = runs[f"{method}-seed0"]
        assert set(run["eval"]["tasks"]) == set(TASKS)
        assert all(cell["512"]["n"] == 2 for cell in run["eval"]["tasks"].values())
        assert run["cost"]["samples"] > 0  # every method trained on something
        gap = run["loss_gap"]["in_sample"][0]
        assert gap["pi_k"]["model_dir"] == pi0  # every method's stage 0 starts from the same pi_0
        assert gap["pi_k+1"]["samples"] == 2
        heldout = run["loss_gap"]["heldout"][0]  # held-out samples under pi_0 and pi_1
        assert set(heldout) == {"pi_0", "pi_1"} and heldout["pi_1"]["samples"] == 2
        assert heldout["pi_0"]["model_dir"] == pi0

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/eval/eval.json")}
    walls = {p: p.read_text() for p in out.glob("*/compare_wall.json")}
    assert len(stamps) == len(METHODS) + 1 and len(walls) == len(METHODS)
    compare(cfg, [0])  # a rerun: nothing is run or evaluated again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert {p: p.read_text() for p in walls} == walls


def test_the_compare_table_is_rebuilt_from_the_kept_results_without_runs(
    one_stage_compare, tmp_path
):
    """What is committed under eval.results_dir is enough: with the run directories moved
    away, compare runs nothing and writes the same table."""
    import shutil

    cfg, result = one_stage_compare
    kept = compare_dir(cfg) / "results"
    assert {p.name for p in kept.glob("*.json")} >= {f"{m}-seed0.json" for m in METHODS}
    before = Path(result["compare_md"]).read_text()
    moved = tmp_path / "runs"
    shutil.move(str(compare_dir(cfg)), moved)
    try:
        (compare_dir(cfg) / "results").parent.mkdir(parents=True)
        shutil.copytree(moved / "results", compare_dir(cfg) / "results")
        again = compare(cfg, [0])
        assert Path(again["compare_md"]).read_text() == before
        assert not any(compare_dir(cfg).glob("*-seed0/stages"))  # no run was redone
    finally:
        shutil.rmtree(compare_dir(cfg))
        shutil.move(str(moved), compare_dir(cfg))
