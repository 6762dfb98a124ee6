"""The base's pretraining recipe (configs/tiny.yaml's pretrain.copy_* keys) still makes a model that
reads its context: the same code path and phases as `policylong prepare-base`, on a smaller
model and context so that it fits the suite (the tiny profile's own build takes ~25 minutes)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pipelines.core.config import ModelSection, load_config
from pipelines.world import base_model
from pipelines.world.ingest import read_docs
from pipelines.world.tokenizer import load_tokenizer

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SEQ = 256
# A formed induction head copies a held-out span at D = SEQ / 2 with a gain of several nats
# (measured on the tiny profile's d256 base: see its base_metrics.json); < 1 nat means it did not.
MIN_GAIN = 1.0


@pytest.fixture(scope="module")
def recipe_metrics(tiny_world):
    tok = load_tokenizer(tiny_world.model_dir)
    blocks = {}
    for split in ("train", "heldout"):
        texts = read_docs(tiny_world.corpus_dir, split)["text"].to_pylist()
        blocks[split] = base_model.pack(tok(texts)["input_ids"], tok.eos_token_id, SEQ)
    recipe = load_config(REPO / "configs" / "tiny.yaml").pretrain
    cfg = dataclasses.replace(
        recipe,
        seq_len=SEQ,
        max_tokens=400 * recipe.batch_size * SEQ,  # 400 text steps: ppl 734 vs 834 at 300
        copy_distance_span=32,
        copy_distance_steps=100,
        threads=2,
    )
    shape = ModelSection(hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=2,
                         intermediate_size=384)  # fmt: skip
    model = base_model.build_model(shape, len(tok), tok.eos_token_id)
    metrics = base_model.pretrain(model, blocks["train"], blocks["heldout"][:64], cfg, seed=0)
    print("recipe metrics:", json.dumps(metrics))  # the margins, with `pytest -s`
    return cfg, metrics


def test_induction_forms_before_the_step_budget(recipe_metrics):
    cfg, metrics = recipe_metrics
    assert metrics["phase_steps"]["induction"] < cfg.copy_induction_steps, metrics


def test_recipe_model_copies_held_out_text_and_beats_the_unigram(recipe_metrics):
    _, metrics = recipe_metrics
    gain = metrics["long_copy_gain"]
    assert gain["distance"] == SEQ // 2
    assert gain["gain"] >= MIN_GAIN, metrics
    assert metrics["heldout_ppl"] < metrics["unigram_ppl"], metrics
