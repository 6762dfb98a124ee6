"""The stage trainer on a real pretrained Llama-architecture model (SmolLM2-135M: GQA, tied
embeddings, its own tokenizer): one Ray Train stage on a sample log of SmolLM2-tokenized text,
with the RoPE base raised, saves pi_1 as an HF checkpoint that loads with the new base, keeps the
embeddings tied, has learned (its loss on the trained samples fell) and trained every sample
once."""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
import pytest
import torch

from pipelines.core.records import StageCounts
from pipelines.core.sample_log import SAMPLE_SCHEMA, SampleLog

pytestmark = pytest.mark.slow
SEQ_LEN, SAMPLES, NEW_THETA = 256, 4, 400_000.0


def _sample_log(path, tokenizer, texts: list[str]) -> list[list[int]]:
    log = SampleLog(path, writer=True)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:SEQ_LEN] for t in texts]
    assert all(len(x) == SEQ_LEN for x in ids), "a text shorter than the sample length"
    rows = [
        {
            "sample_id": f"smollm2-{i}",
            "stage": 0,
            "policy_version": 0,
            "seed_doc_id": f"doc-{i}",
            "positions": [],
            "input_ids": x,
            "segments": [
                {"chunk_id": "", "role": "document", "start": 0, "length": SEQ_LEN}
                | {"r": float("nan"), "similarity": float("nan")}
            ],
        }
        for i, x in enumerate(ids)
    ]
    log.commit("shard-0", pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA))
    log.finish(StageCounts(samples=len(rows)), len(rows), None)
    return ids


def _mean_loss(model_dir, ids: list[list[int]]) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        x = torch.tensor(ids)
        return float(model(input_ids=x, labels=x).loss)


def test_a_stage_trains_smollm2_and_saves_a_tied_checkpoint_with_the_raised_rope_base(
    smollm2_dir, tiny_world, test_config, ray_local, tmp_path
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.steps.train import StageTrainSpec, train_stage
    from pipelines.world.ingest import read_docs

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    texts = [
        t for t in read_docs(tiny_world.corpus_dir, "train")["text"].to_pylist() if len(t) > 4000
    ]
    ids = _sample_log(tmp_path / "samples", tokenizer, texts[:SAMPLES])
    train = dataclasses.replace(
        test_config.train, lr=1e-4, batch_size=1, warmup_ratio=0.0, schedule="constant"
    )
    spec = StageTrainSpec(
        stage=0,
        init_model_dir=str(smollm2_dir),
        out_model_dir=str(tmp_path / "model"),
        sample_log_dir=str(tmp_path / "samples"),
        ledger_dir=str(tmp_path / "train"),
        seq_len=SEQ_LEN,
        rope_theta=NEW_THETA,
        budget_samples=SAMPLES,
        train=dataclasses.asdict(train),
        threads=2,
        probe_ids=ids[0][:32],
    )
    workers = dataclasses.replace(test_config.resources.trainer, count=1, cpus=1.0)
    train_stage(spec, workers)

    saved = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"))
    assert saved.config.rope_parameters["rope_theta"] == NEW_THETA
    assert saved.config.tie_word_embeddings
    assert saved.lm_head.weight.data_ptr() == saved.model.embed_tokens.weight.data_ptr()
    trained = [
        json.loads(x)["sample_id"]
        for x in (tmp_path / "train" / "rank0.jsonl").read_text().splitlines()
    ]
    assert sorted(trained) == [f"smollm2-{i}" for i in range(SAMPLES)]
    # the same raised RoPE base for both: what changed is the weights
    base = tmp_path / "smollm2-raised"
    original = AutoModelForCausalLM.from_pretrained(str(smollm2_dir))
    original.config.rope_parameters["rope_theta"] = NEW_THETA
    original.save_pretrained(str(base))
    assert _mean_loss(tmp_path / "model", ids) < _mean_loss(base, ids)
