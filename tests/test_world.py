"""The embedded world: Shakespeare corpus, BPE tokenizer, and a pi_0 that beats a unigram model."""

from __future__ import annotations

import math

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines import base_model
from pipelines.ingest import read_docs
from pipelines.shakespeare import split_work


def test_embedded_corpus_is_many_scene_sized_documents(tiny_world):
    docs = read_docs(tiny_world.corpus_dir)
    assert docs.num_rows > 500
    texts = docs["text"].to_pylist()
    assert sum("Hamlet" in t[:40] for t in texts) >= 15  # Hamlet split into scenes
    assert set(docs["split"].to_pylist()) == {"train", "heldout"}


def test_play_splits_into_scenes_and_sonnets_into_sonnets():
    play = "THE PLAY\n\nACT I.\n\nScene I. A room.\n\nA.\nHi.\n\nScene II. A hall.\n\nB.\nBye.\n"
    parts = split_work("play", play)
    assert [label for label, _ in parts] == ["play#0", "play#1"]
    assert parts[1][1].startswith("The Play\n\nScene II. A hall.")
    sonnets = "THE SONNETS\n\nI\n\nFrom fairest creatures\n\nII\n\nWhen forty winters\n"
    assert len(split_work("sonnets", sonnets)) == 2


def test_tokenizer_round_trips_text(tiny_world):
    tok = AutoTokenizer.from_pretrained(str(tiny_world.model_dir))
    for text in ["To be, or not to be: that is the question.", "Ünïcödé — émoji 🎭 and\ttabs\n"]:
        assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.eos_token == "<|endoftext|>"


def test_every_loader_gives_the_same_token_ids(tiny_world):
    from tokenizers import Tokenizer

    text = read_docs(tiny_world.corpus_dir, "heldout")["text"].to_pylist()[0][:4000]
    raw = Tokenizer.from_file(str(tiny_world.model_dir / "tokenizer.json")).encode(text).ids
    auto = AutoTokenizer.from_pretrained(str(tiny_world.model_dir))(text)["input_ids"]
    assert raw == auto and len(raw) > 300


def test_base_model_loads_and_beats_unigram(tiny_world, test_config):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_world.model_dir))
    tok = AutoTokenizer.from_pretrained(str(tiny_world.model_dir))
    assert model.config.head_dim == 64  # vLLM's CPU attention needs head_dim >= 64
    heldout = read_docs(tiny_world.corpus_dir, "heldout")["text"].to_pylist()
    blocks = base_model.pack(tok(heldout)["input_ids"], tok.eos_token_id, 256)[:20]
    ppl = math.exp(base_model.mean_nll(model, blocks, 8))
    assert abs(ppl - tiny_world.metrics["heldout_ppl"]) / ppl < 0.25  # metric is real
    assert tiny_world.metrics["heldout_ppl"] < 0.7 * tiny_world.metrics["unigram_ppl"]


def test_unigram_baseline_matches_hand_computation():
    train = torch.tensor([[0, 0, 1, 2]])
    evalb = torch.tensor([[2, 0, 1]])
    # counts+1 over vocab 3: [3, 2, 2] / 7; targets 0, 1
    expected = -(math.log(3 / 7) + math.log(2 / 7)) / 2
    assert abs(base_model.unigram_nll(train, evalb, 3) - expected) < 1e-9
