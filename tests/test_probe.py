"""The long-copy probe (pipelines/eval/probe.py): it separates a model that copies from its context
from
one that does not, feeds every model the same inputs, and `policylong probe` writes its files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from copying_policy import VOCAB

from pipelines.cli import main
from pipelines.core.long_copy import SPAN, copy_probe_inputs, long_copy_gain, span_nll

STREAM = np.random.default_rng(0).integers(0, VOCAB, 20_000)  # uniform: only copying helps


@pytest.fixture(scope="module")
def copier(copier_dir):
    """The suite's copy policy (tests/copying_policy.py, shipped and re-measured per session)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(copier_dir)).eval()


@pytest.fixture(scope="module")
def random_init(copier):
    """The copier's architecture, untrained: it cannot read its context."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(copier.config).eval()


def test_probe_separates_a_copying_model_from_one_that_does_not_read_its_context(
    copier, random_init
):
    # Measured at D=64, 12 samples: copier gain 7.39 nats (seed 0; NLL 0.25 with the copy, 7.64
    # without), 6.94 and 7.22 (seeds 1, 2); random init 0.003 (|gain| <= 0.009 at D = 32..500,
    # seeds 0-2). Margins: >= 2 nats (3.5x under the lowest), < 0.2 (20x over the largest).
    # Beyond the 128-token rows the copier was trained on its gain collapses (D=200: 0.22-0.39,
    # D=500: 0.04-0.06): the probe sees where a model stops reading its context.
    copy = long_copy_gain(copier, STREAM, [64])[64]
    blind = long_copy_gain(random_init, STREAM, [64])[64]
    assert copy["gain"] >= 2.0, copy
    assert abs(blind["gain"]) < 0.2, blind
    # The probe's numbers equal a reference computed here from the definition (float64, whole
    # rows' logits, one batch): scored tokens, batching and averaging are the probe's own.
    reference = _reference_gain(copier, 64)
    for key in ("gain", "nll_with", "nll_without", "gain_se"):
        assert copy[key] == pytest.approx(reference[key], abs=1e-4), (key, copy, reference)


def _reference_gain(model, distance: int) -> dict:
    """gain(D) of the module docstring of pipelines/core/long_copy.py, computed without its code:
    the second span starts at position D; its tokens 2..SPAN are scored."""
    with_copy, without = copy_probe_inputs(STREAM, distance)
    scored = torch.arange(distance + 1, distance + SPAN)  # target positions

    def nll(rows):
        ids = torch.as_tensor(rows)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits.double(), -1)
        return -logp[:, scored - 1].gather(-1, ids[:, scored].unsqueeze(-1)).squeeze(-1).mean(1)

    nll_with, nll_without = nll(with_copy), nll(without)
    gains = (nll_without - nll_with).numpy()
    return {
        "gain": float(gains.mean()),
        "nll_with": float(nll_with.mean()),
        "nll_without": float(nll_without.mean()),
        "gain_se": float(gains.std(ddof=1) / np.sqrt(len(gains))),
    }


def test_scored_tokens_are_the_second_span_but_its_first_token(random_init):
    with_copy, _ = copy_probe_inputs(STREAM, 64, samples=2)
    ids = torch.as_tensor(with_copy)
    with torch.no_grad():
        logp = torch.log_softmax(random_init(input_ids=ids).logits.float(), -1)
    positions = torch.arange(64, 64 + SPAN - 1)  # D .. D+span-2 predict D+1 .. D+span-1
    manual = -logp[:, positions].gather(-1, ids[:, positions + 1].unsqueeze(-1)).squeeze(-1)
    np.testing.assert_allclose(span_nll(random_init, with_copy), manual.mean(1).numpy(), rtol=1e-5)


def test_inputs_depend_only_on_stream_seed_and_distance(copier, random_init):
    with_a, without_a = copy_probe_inputs(STREAM, 64, seed=3)
    with_b, without_b = copy_probe_inputs(STREAM, 64, seed=3)
    assert np.array_equal(with_a, with_b) and np.array_equal(without_a, without_b)
    assert with_a.shape == without_a.shape == (12, 64 + SPAN)
    assert not np.array_equal(with_a, copy_probe_inputs(STREAM, 64, seed=4)[0])
    # The copy: the second span repeats the first; without it, only the first span differs.
    assert np.array_equal(with_a[:, :SPAN], with_a[:, 64:])
    assert np.array_equal(with_a[:, SPAN:], without_a[:, SPAN:])
    assert (with_a[:, :SPAN] != without_a[:, :SPAN]).any(axis=1).all()
    # Both models are fed exactly these rows, whatever other distances are probed alongside.
    seen = {}
    for name, model in (("copier", copier), ("random", random_init)):
        rows = seen.setdefault(name, [])
        hook = model.register_forward_pre_hook(
            lambda _m, _a, kw, rows=rows: rows.append(kw["input_ids"].numpy().copy()),
            with_kwargs=True,
        )
        try:
            long_copy_gain(model, STREAM, [64, 96] if name == "copier" else [64], seed=3)
        finally:
            hook.remove()
    fed = {name: [r for r in rows if r.shape[1] == 64 + SPAN] for name, rows in seen.items()}
    assert np.array_equal(np.concatenate(fed["copier"]), np.concatenate(fed["random"]))
    assert np.array_equal(np.concatenate(fed["copier"]), np.concatenate([with_a, without_a]))


def _cli_dirs(test_config) -> list[str]:
    out = ["--config", "configs/test.yaml"]
    for key in ("output_dir", "cache_dir"):
        out += ["--set", f"run.{key}={getattr(test_config.run, key)}"]
    return out


def test_cli_probes_the_test_base_and_writes_json_and_plot(
    tiny_world, test_config, tmp_path, capsys
):
    args = ["probe", *_cli_dirs(test_config), "--model", str(tiny_world.model_dir)]
    assert main([*args, "--distances", "64,128,512", "--out", str(tmp_path)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    [result] = line["models"]
    assert set(result["gain"]) == {"64", "128", "512"}
    assert result["samples"] == 12 and result["heldout_ppl"] > 1.0
    assert json.loads((tmp_path / "probe.json").read_text())["models"] == line["models"]
    assert (tmp_path / "probe.png").stat().st_size > 1000


def test_cli_distance_beyond_the_model_is_one_line_and_exit_2(tiny_world, test_config):
    config = json.loads((tiny_world.model_dir / "config.json").read_text())
    limit = config["max_position_embeddings"]
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "probe", *_cli_dirs(test_config)]
        + ["--model", str(tiny_world.model_dir), "--distances", f"128,{limit}"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith(f"error: probe distance(s) {limit} + span 24 exceed the")


def test_report_probes_pi0_and_each_stage_checkpoint(tiny_world, test_config, tmp_path):
    """A run dir whose one stage (trained at 800 tokens) saved pi_0 unchanged as its checkpoint:
    the report finds pi_0 through the saved config, probes both at D = 128, 256, 768 (<= 800 - 24)
    and marks pi_0's D=768 as beyond its pretraining context (512)."""
    import shutil

    from pipelines.core.config import config_to_yaml
    from pipelines.driver.report import write_report

    run_dir = tmp_path / "run"
    stage = run_dir / "stages" / "stage_0"
    stage.mkdir(parents=True)
    (run_dir / "corpus").symlink_to(tiny_world.corpus_dir.resolve())
    (run_dir / "config.yaml").write_text(config_to_yaml(test_config))
    (stage / "stage_manifest.json").write_text(json.dumps({"stage": 0, "seq_len": 800}))
    shutil.copytree(tiny_world.model_dir, stage / "model")
    text = write_report(run_dir).read_text()
    probe = json.loads((run_dir / "probe.json").read_text())["models"]
    assert [m["name"] for m in probe] == ["pi_0", "stage_0 (pi_1)"]
    assert [m["distances"] for m in probe] == [[128, 256, 768], [128, 256, 768]]
    assert probe[0]["gain"] == probe[1]["gain"]  # same weights, same inputs
    assert probe[0]["heldout_ppl"] == pytest.approx(tiny_world.metrics["heldout_ppl"], rel=1e-3)
    row = next(x for x in text.splitlines() if x.startswith("| pi_0 |"))
    assert row.endswith("* |") and "| 512 |" in row and "*" not in row.split("|")[-3]
    assert "## Long-copy probe" in text and (run_dir / "probe.png").stat().st_size > 1000
