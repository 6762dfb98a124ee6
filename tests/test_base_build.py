"""pi_0's build path (tokenizer, every pretraining phase, the cached base) runs in every test run,
into a cache of its own (issue 32 item 7). The suite's world lives in the shared runs/cache, so on
a warm checkout nothing else in the suite builds a base; a small model and budget keep this one
to seconds, not the test profile's build."""

from __future__ import annotations

import json

import pytest

from pipelines.world import world as world_module

SMALL = [
    "tokenizer.vocab_size=1024",
    "model.hidden_size=64",
    "model.num_layers=1",
    "model.num_heads=1",
    "model.num_kv_heads=1",
    "model.intermediate_size=128",
    "pretrain.seq_len=256",
    "pretrain.max_tokens=4096",  # 2 text steps of 8 x 256
    "pretrain.eval_tokens=2048",
    "pretrain.warmup_steps=1",
    "pretrain.copy_induction_steps=3",
    "pretrain.copy_distance_steps=2",
    "pretrain.copy_mix_rows=2",
    "pretrain.copy_loss_weight=1.0",
    "pretrain.copy_formed_nll=0.0",
    "pretrain.threads=1",
]


class BuildStarted(Exception):
    pass


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_cold_cache_builds_pi0_and_a_warm_one_reuses_it(
    load_test_profile, tiny_world, tmp_path, monkeypatch
):
    from transformers import AutoModelForCausalLM

    from pipelines.world.tokenizer import load_tokenizer

    # run.name test: the tiny world's ingested corpus is reused, the base is not
    cfg = load_test_profile("run.name=test", f"run.cache_dir={tmp_path}", *SMALL)
    world = world_module.ensure_world(cfg)
    assert world.corpus_dir == tiny_world.corpus_dir
    assert world.model_dir.parent == tmp_path and world.model_dir.name.startswith("base-")
    metrics = json.loads((world.model_dir / "base_metrics.json").read_text())
    assert metrics["phase_steps"] == {"induction": 3, "distance": 2, "text": 2}, metrics
    assert metrics["heldout_ppl"] > 1, metrics
    model = AutoModelForCausalLM.from_pretrained(str(world.model_dir))
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (64, 1)
    vocab = len(load_tokenizer(world.model_dir))
    assert vocab == model.config.vocab_size == metrics["vocab_size"] <= 1024

    def refuse(*args, **kwargs):
        raise BuildStarted

    monkeypatch.setattr(world_module, "_build_base", refuse)  # a fault: a rebuild would start
    again = world_module.ensure_world(cfg)
    assert again.model_dir == world.model_dir and again.metrics == metrics
