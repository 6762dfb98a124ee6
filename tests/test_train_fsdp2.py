"""FSDP2 on CPU (two Ray Train workers, gloo): it trains the samples DDP trains with the same
losses, a worker killed mid-stage resumes from the DCP checkpoint with every sample trained
exactly once, and the saved pi_{k+1} is the gathered full model, loadable with from_pretrained."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from fault_injection import train_worker_killed_at_step

from pipelines.driver.stage_driver import run_policylong, stage_dir

pytestmark = pytest.mark.slow
SAMPLES, STEPS = 24, 12  # 2 workers x batch 1; checkpoints every 5 steps
# Measured on a 2-core machine: the largest per-step loss difference FSDP2 vs DDP was 0.0 (float32,
# two ranks: bit-identical, the kill and DCP resume included). 1e-3 leaves room for other CPUs'
# reduction orders and is far below what a wrong shard or a skipped step does (> 0.05).
LOSS_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def ddp_stage(load_test_profile, tiny_world, ray_local):
    """One stage trained with DDP on concatenated samples (built in a second): the reference."""
    cfg = load_test_profile(
        "run.name=ddp-reference",
        "stages.method=concat",
        "stages.seq_lens=[512]",
        "stages.rope_thetas=[20000.0]",
        f"stages.tokens_per_stage={SAMPLES * 512}",
        "stages.seed_docs_per_stage=48",
    )
    run_policylong(cfg)
    return cfg


@pytest.fixture(scope="module")
def fsdp2_stage(ddp_stage, tiny_world, tmp_path_factory):
    """The same stage's samples trained again with FSDP2, rank 1 killed at step 6."""
    from pipelines.steps.train import StageTrainSpec, train_stage

    cfg, out = ddp_stage, tmp_path_factory.mktemp("fsdp2")
    sdir = stage_dir(cfg, 0)
    ddp_spec = json.loads((sdir / "stage_manifest.json").read_text())
    assert ddp_spec["construction"]["samples"] == SAMPLES
    spec = StageTrainSpec(
        stage=0,
        init_model_dir=str(Path(tiny_world.model_dir).resolve()),
        out_model_dir=str(out / "model"),
        sample_log_dir=str((sdir / "samples").resolve()),
        ledger_dir=str(out / "train"),
        seq_len=512,
        rope_theta=20000.0,
        budget_samples=SAMPLES,
        train=dataclasses.asdict(dataclasses.replace(cfg.train, strategy="fsdp2")),
        probe_ids=list(range(2, 66)),
    )
    with train_worker_killed_at_step(out / "train", 6) as killed:
        result = train_stage(spec, cfg.resources.trainer)
    return out, result, killed


def _log(train_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (train_dir / "train_log.jsonl").read_text().splitlines()]


def test_fsdp2_losses_match_ddp_on_the_same_samples(ddp_stage, fsdp2_stage):
    out, _, _ = fsdp2_stage
    ddp = _log(stage_dir(ddp_stage, 0) / "train")
    fsdp = _log(out / "train")
    assert [r["step"] for r in fsdp] == [r["step"] for r in ddp] == list(range(STEPS))
    diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(fsdp, ddp, strict=True)]
    assert max(diffs) <= LOSS_TOLERANCE, diffs
    assert len({round(r["loss"], 3) for r in ddp}) > STEPS // 2  # distinct per step: not vacuous


def test_a_killed_fsdp2_worker_resumes_from_dcp_and_trains_every_sample_once(
    ddp_stage, fsdp2_stage
):
    import pyarrow.parquet as pq

    out, _, killed = fsdp2_stage
    [pid] = killed
    assert int((out / "train" / "rank1.pid").read_text()) != pid  # a new process took rank 1
    trained = [
        json.loads(x)["sample_id"]
        for f in sorted((out / "train").glob("rank*.jsonl"))
        for x in f.read_text().splitlines()
    ]
    files = sorted((stage_dir(ddp_stage, 0) / "samples").glob("shard-*.parquet"))
    committed = [i for f in files for i in pq.read_table(f, columns=["sample_id"])["sample_id"]]
    assert sorted(trained) == sorted(str(i) for i in committed)
    assert len(set(trained)) == len(trained) == SAMPLES


def test_saved_fsdp2_model_is_the_gathered_full_model(fsdp2_stage, tiny_world):
    """The HF checkpoint equals the final DCP checkpoint (every rank's shard) weight by weight,
    and loads with from_pretrained."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from transformers import AutoModelForCausalLM

    out, result, _ = fsdp2_stage
    final = Path(result.checkpoint.path)
    assert json.loads((final / "step.json").read_text())["step"] == STEPS
    dcp_to_torch_save(str(final), str(out / "final.pt"))
    sharded = torch.load(out / "final.pt", weights_only=False)["model"]
    saved = AutoModelForCausalLM.from_pretrained(str(out / "model")).state_dict()
    assert saved.keys() == {k.removeprefix("model.") for k in sharded}
    worst = max(
        (saved[k.removeprefix("model.")] - v).abs().max().item() for k, v in sharded.items()
    )
    assert worst <= 1e-6, worst
    initial = AutoModelForCausalLM.from_pretrained(str(tiny_world.model_dir)).state_dict()
    moved = max((saved[k] - initial[k]).abs().max().item() for k in saved)
    assert moved > 1e-3, moved  # it trained: the equality above is not with the base
    assert (out / "model" / "sync_probe.json").is_file()  # probed on the full model, rank 0 alone
