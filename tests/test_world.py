"""The embedded world: Shakespeare corpus, BPE tokenizer, and a pi_0 that beats a unigram model."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines.world import base_model
from pipelines.world.ingest import read_docs
from pipelines.world.shakespeare import split_work


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
    # The test world's pi_0 is the shipped copying base: 300 text steps after the copy phases, a
    # weaker LM than a text-only base (measured 881 vs the unigram's 1015: 0.87), but a real one
    assert tiny_world.metrics["heldout_ppl"] < 0.95 * tiny_world.metrics["unigram_ppl"]


def test_unigram_baseline_matches_hand_computation():
    train = torch.tensor([[0, 0, 1, 2]])
    evalb = torch.tensor([[2, 0, 1]])
    # counts+1 over vocab 3: [3, 2, 2] / 7; targets 0, 1
    expected = -(math.log(3 / 7) + math.log(2 / 7)) / 2
    assert abs(base_model.unigram_nll(train, evalb, 3) - expected) < 1e-9


def test_copy_rows_recur_at_varying_distances_and_mark_only_copyable_tokens():
    tokens = torch.arange(100, 356)  # 256 ids
    gen = torch.Generator().manual_seed(0)
    x, copied = base_model.copy_rows(tokens, rows=64, length=128, span=16, gen=gen)
    assert x.shape == copied.shape == (64, 128)
    assert bool(((x >= 100) & (x < 356)).all())
    distances = set()
    for row, mask in zip(x.tolist(), copied.tolist(), strict=True):
        marked = [t for t, m in enumerate(mask) if m]
        assert len(marked) == 15  # the span but its first token (nothing announces a repeat)
        dst = marked[0] - 1
        # the recurring span equals an earlier one, at least a span back
        src = [s for s in range(dst - 16 + 1) if row[s : s + 16] == row[dst : dst + 16]]
        assert src, row
        distances.add(dst - src[-1])
    assert len(distances) > 20  # a fixed offset would teach a positional shortcut, not induction


def test_copy_span_longer_than_half_a_row_is_one_config_line(load_test_profile):
    from pipelines.core.config import ConfigError

    with pytest.raises(ConfigError, match="pretrain.copy_span"):
        load_test_profile("pretrain.copy_row_len=32", "pretrain.copy_span=20")


def _small_pretrain(test_config, **phases):
    """A 1-layer model on 16 random rows of 64 tokens, and pretrain settings sized for it:
    seq_len 64, 2 rows per step, copy rows of 32 with 8-token spans (16 at full length) over
    40 token ids; `phases` sets the step counts and the rest."""
    from pipelines.core.config import ModelSection, PretrainSection

    # From the schema's defaults (no copy phase), not the test profile's recipe: each test
    # turns on the phases it checks.
    cfg = PretrainSection(
        lr=0.003,
        warmup_steps=10,
        seq_len=64,
        batch_size=2,
        copy_row_len=32,
        copy_span=8,
        copy_distance_span=16,
        copy_vocab=40,
        copy_loss_weight=1.0,
        threads=1,
        **phases,
    )
    shape = ModelSection(hidden_size=64, num_layers=1, num_heads=1, num_kv_heads=1)
    model = base_model.build_model(shape, vocab_size=64, eos_id=0)
    blocks = torch.randint(1, 64, (16, 64), generator=torch.Generator().manual_seed(0))
    return cfg, model, blocks


def test_pretrain_runs_the_induction_phases_and_reports_their_time(test_config, monkeypatch):
    cfg, model, blocks = _small_pretrain(
        test_config,
        max_tokens=2 * 64 * 3,  # 3 text steps
        copy_induction_steps=3,
        copy_distance_steps=2,
        copy_rows=4,
        copy_mix_rows=1,
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []  # (rows shape, restricted softmax?) of every loss the phases compute
    real_loss = base_model.lm_and_copy_loss

    def counting(model, x, copied, weight, vocab=None):
        calls.append((tuple(x.shape), vocab is not None))
        return real_loss(model, x, copied, weight, vocab)

    monkeypatch.setattr(base_model, "lm_and_copy_loss", counting)
    metrics = base_model.pretrain(model, blocks, blocks[:2], cfg, seed=0)
    induction, distance = [((4, 32), True)] * 3, [((2, 64), True)] * 2
    text = [((2, 64), False), ((1, 64), True)] * 3  # corpus rows + copy_mix_rows copy rows
    assert calls == induction + distance + text
    assert set(metrics["phase_s"]) == {"induction_s", "distance_s", "text_s"}
    assert metrics["copy_rows_tokens"] == (3 + 2) * 4 * 32
    assert metrics["phase_steps"] == {"induction": 3, "distance": 2, "text": 3}
    assert metrics["long_copy_gain"]["distance"] == 32  # half the context, on held-out rows
    assert math.isfinite(metrics["long_copy_gain"]["gain"])
    assert metrics["train_tokens"] == 3 * 2 * 64
    assert math.isfinite(metrics["heldout_ppl"])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_formation_watch_needs_a_full_window_below_the_threshold():
    watch = base_model.FormationWatch(threshold=1.0, window=3)
    assert not watch.formed(0.1)  # one step is no evidence
    assert not watch.formed(0.1)
    assert watch.formed(0.1)
    watch = base_model.FormationWatch(threshold=1.0, window=3)
    assert [watch.formed(x) for x in (6.2, 0.2, 0.2, 0.2)] == [False, False, False, True]


def test_induction_phase_ends_when_formed_not_at_its_step_budget(test_config):
    """With copy_formed_nll above any NLL the watch fires after its 25-step window: the phase
    takes 25 of its 60 allowed steps, and the distance and text phases still run in full."""
    cfg, model, blocks = _small_pretrain(
        test_config,
        max_tokens=2 * 64 * 2,
        copy_induction_steps=60,
        copy_formed_nll=100.0,
        copy_distance_steps=2,
        copy_rows=2,
    )
    metrics = base_model.pretrain(model, blocks, blocks[:2], cfg, seed=0)
    assert metrics["phase_steps"] == {"induction": 25, "distance": 2, "text": 2}


@pytest.mark.timeout(120)
def test_rows_with_a_repeated_span_are_spread_over_the_whole_text_phase(test_config, monkeypatch):
    """Issue 28: the rows with a copied span were picked by the same seeded permutation that
    orders the text rows, so all of them came first and none in the second half of the phase."""
    cfg, model, blocks = _small_pretrain(test_config, max_tokens=2 * 64 * 40, repeat_fraction=0.5)
    blocks = torch.randint(1, 64, (80, 64), generator=torch.Generator().manual_seed(1))
    copied_rows = []  # per text step: rows of the batch holding copied tokens
    real_loss = base_model.lm_and_copy_loss

    def recording(model, x, copied, weight, vocab=None):
        copied_rows.append(int(copied.any(dim=1).sum()))
        return real_loss(model, x, copied, weight, vocab)

    monkeypatch.setattr(base_model, "lm_and_copy_loss", recording)
    base_model.pretrain(model, blocks, blocks[:2], cfg, seed=0)
    assert len(copied_rows) == 40
    windows = [sum(copied_rows[i : i + 10]) for i in range(0, 40, 10)]
    assert all(w >= 8 for w in windows), windows  # half of each 2-row batch, 10 per window
    assert sum(copied_rows) == 40  # half of the 80 rows
