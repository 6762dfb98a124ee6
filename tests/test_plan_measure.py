"""`policylong plan --measure N`: the yields it measures are those of a construct-only run of the
same documents, it re-prices the stages with them, and a setting that can give no positive ends
in one plain "cannot fill" line with exit code 0."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipelines.cli import main
from pipelines.driver.plan import Assumptions
from pipelines.driver.plan_measure import TAU_POS_GRID, measure
from pipelines.driver.stage_driver import stage_dir

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SMALL = ["screen.batch_docs=4"]


@pytest.mark.timeout(1500)
def test_measure_matches_a_construct_only_run_and_reprices(
    load_test_profile, tiny_world, ray_local, tmp_path, capsys
):
    cfg = load_test_profile(*SMALL)  # the world's run: its ingested corpus is shared
    record = measure(cfg, 8, Assumptions(), None)
    y = record["measured"]
    # The same 8 documents (stage 0's first seeds), built by `policylong construct` of one stage.
    one = ["stages.seq_lens=[512]", "stages.rope_thetas=[20000.0]"]
    ref = load_test_profile("run.name=measure-ref", "stages.seed_docs_per_stage=8", *SMALL, *one)
    ref.run_dir.mkdir(parents=True, exist_ok=True)
    (ref.run_dir / "corpus").symlink_to(tiny_world.corpus_dir)  # no second ingest
    (tmp_path / "ref.yaml").write_text(yaml.safe_dump(ref.to_dict()))
    assert main(["construct", "--config", str(tmp_path / "ref.yaml")]) == 0
    counts = json.loads((stage_dir(ref, 0) / "stage_manifest.json").read_text())["construction"]
    docs = counts["documents"]
    assert y["documents"] == docs == 8
    assert y["positions_per_doc"] * docs == pytest.approx(counts["positions"])
    assert y["candidates_per_position"] * counts["positions"] == pytest.approx(counts["candidates"])
    c = y["configured"]  # recounted from the candidates table's r: the verifier's own counts
    assert c["tau_pos"] == cfg.verify.tau_pos
    assert c["positives_per_doc"] * docs == pytest.approx(counts["positives"])
    assert c["negatives_per_doc"] * docs == pytest.approx(counts["negatives"])
    assert c["samples_per_doc"] * docs == pytest.approx(counts["samples"]) and counts["samples"]
    grid = y["tau_pos_grid"]
    assert [g["tau_pos"] for g in grid] == list(TAU_POS_GRID)
    positives = [g["positives_per_doc"] for g in grid]
    assert positives == sorted(positives, reverse=True)  # a higher tau_pos keeps fewer
    assert y["r_quantiles"]["0.0"] <= y["r_quantiles"]["0.5"] <= y["r_quantiles"]["1.0"]
    # Re-priced with the measured yields, not the defaults.
    a = record["plan"]["assumptions"]
    assert a["samples_per_doc"] == c["samples_per_doc"] != Assumptions().samples_per_doc
    assert a["positions_per_doc"] == y["positions_per_doc"]
    for s, f in zip(record["plan"]["stages"], record["fill"], strict=True):
        assert s["seed_docs_needed"] == math.ceil(s["budget_samples"] / c["samples_per_doc"])
        assert s["documents_screened"] == min(cfg.stages.seed_docs_per_stage, s["seed_docs_needed"])
        assert f["corpus_has"] == (f["cumulative"] <= record["corpus_documents"])
    saved = json.loads((cfg.run_dir.with_name("test-plan-measure") / "plan_measure.json")
                       .read_text())  # fmt: skip
    assert saved["measured"]["configured"] == c
    assert "candidates per position" in capsys.readouterr().out
    assert set(y["examples"]) == {str(t) for t in TAU_POS_GRID}
    for tau, picks in y["examples"].items():  # any candidate passing tau has its texts kept
        passing = y["tau_pos_grid"][TAU_POS_GRID.index(float(tau))]["positives_per_doc"] > 0
        assert bool(picks) == passing
        assert all(e["r"] >= float(tau) and e["anchor"] and e["chunk"] for e in picks)


def test_examples_show_the_best_and_the_weakest_candidate_a_threshold_keeps():
    from pipelines.driver.plan_measure import examples

    r = np.array([0.5, 0.02, 0.12, 0.3, 0.07, 0.3])
    ex = examples(r, [f"a{i}" for i in range(6)], [f"c{i}" for i in range(6)])
    assert [e["anchor"] for e in ex["0.1"]] == ["a0", "a2"]  # best, then weakest passing
    assert [e["anchor"] for e in ex["0.2"]] == ["a0", "a5"]
    assert [e["anchor"] for e in ex["0.4"]] == ["a0"]  # one passes: shown once
    assert ex["0.05"][-1]["r"] == pytest.approx(0.07)


@pytest.mark.timeout(1200)
def test_no_positive_prints_the_cannot_fill_line_and_exits_0(load_test_profile, tiny_world):
    cfg = load_test_profile()
    sets = [
        f"run.output_dir={cfg.run.output_dir}", f"run.cache_dir={cfg.run.cache_dir}",
        "verify.tau_pos=0.99", *SMALL,
    ]  # fmt: skip
    command = [sys.executable, "-m", "pipelines.cli", "plan", "--measure", "8",
               "--config", str(REPO / "configs" / "test.yaml")]  # fmt: skip
    command += [x for s in sets for x in ("--set", s)]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1100)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [x for x in out.stdout.splitlines() if x.startswith("cannot fill")]
    assert len(lines) == 1, out.stdout
    assert "at tau_pos 0.99 this corpus gives 0 samples per 1,000 documents" in lines[0]
    assert "lower verify.tau_pos" in lines[0]
    assert "Traceback" not in out.stderr
