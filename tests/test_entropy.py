"""Tiled exact entropy == the naive full-logits reference, on a trained model and on random."""

from __future__ import annotations

import math

import pytest
import torch

from pipelines.core.entropy import entropies_at, naive_token_entropies, token_entropies


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    assert a.shape == b.shape
    assert torch.isnan(a[0]) and torch.isnan(b[0])  # alignment: nothing predicts x_0
    assert not torch.isnan(a[1:]).any()
    if a.shape[0] > 1:
        assert (a[1:] - b[1:]).abs().max().item() < tol


@pytest.fixture(scope="module")
def trained(tiny_world):
    """Real final hidden states of the trained tiny model on real text, and its lm_head."""
    from actors.hf_backend import HFBackend
    from pipelines.world.ingest import read_docs
    from pipelines.world.tokenizer import load_tokenizer

    backend = HFBackend(tiny_world.model_dir)
    tok = load_tokenizer(tiny_world.model_dir)
    texts = read_docs(tiny_world.corpus_dir, "heldout")["text"].to_pylist()[:3]
    seqs = [ids[:n] for ids, n in zip(tok(texts)["input_ids"], (300, 77, 2), strict=False)]
    return backend, seqs, backend.hidden_states(seqs), backend.lm_head_weight()


@pytest.mark.parametrize(("rows", "vocab_tile"), [(1, 2048), (64, 16), (256, 7), (1000, 8191)])
def test_tiled_matches_naive_on_trained_model(trained, rows, vocab_tile):
    _, _, hiddens, weight = trained
    # float32 rounding grows with the number of tiles the online softmax merges: the 8192-token
    # vocabulary in tiles of 7 is 1171 merges, measured max error 1.4e-5 (2026-12-05)
    tol = 1e-5 * max(1.0, math.ceil(weight.shape[0] / vocab_tile) / 512)
    for h in hiddens:
        got = token_entropies(h, weight, rows, vocab_tile)
        _close(got, naive_token_entropies(h, weight), tol)


def test_online_rescale_when_the_max_sits_in_a_late_tile():
    # The running max must be rescaled when a later vocabulary tile holds a larger logit:
    # put one dominant logit in the last tile and a flat tail everywhere else.
    g = torch.Generator().manual_seed(3)
    v, d = 4000, 16
    w = torch.randn(v, d, generator=g) * 0.1
    h = torch.rand(6, d, generator=g) + 0.2  # positive rows ...
    w[v - 5] = 2.0  # ... so this row of the lm_head gives every row a large logit in the last tile
    ref = naive_token_entropies(h, w)
    for tile in (1, 100, 999, v):
        _close(token_entropies(h, w, 4, tile), ref, 1e-5)
    assert (ref[1:] < 0.5 * math.log(v)).all()  # the peak really dominates


def test_trained_entropies_are_informative(trained):
    # A random-init model sits near log V everywhere and hides numerical errors: make sure the
    # parity above is checked on peaked, varied distributions.
    _, _, hiddens, weight = trained
    ent = token_entropies(hiddens[0], weight, 256)[1:]
    assert ent.mean() < math.log(weight.shape[0]) - 1.0 and ent.std() > 0.2


def test_alignment_matches_hf_logits(trained):
    # out[t] is the entropy of the distribution HF's logits[t-1] give for token t.
    backend, seqs, hiddens, weight = trained
    with torch.no_grad():
        logits = backend.model(input_ids=torch.tensor([seqs[1]])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    ref = -(logp.exp() * logp).sum(-1)
    got = token_entropies(hiddens[1], weight, 16)
    assert (got[1:].double() - ref[:-1]).abs().max() < 1e-5


def test_chunked_matches_naive_on_random():
    g = torch.Generator().manual_seed(0)
    for t, v, d in [(1, 50, 8), (5, 3000, 32), (513, 5000, 64)]:
        h = torch.randn(t, d, generator=g)
        w = torch.randn(v, d, generator=g) * 0.3
        _close(token_entropies(h, w, 128, 1000), naive_token_entropies(h, w), 1e-5)


def test_entropies_at_equals_full(trained):
    _, _, hiddens, weight = trained
    h = hiddens[0]
    full = token_entropies(h, weight, 256)
    positions = [1, 2, 50, 51, 199, h.shape[0] - 1]
    got = entropies_at(h, weight, positions, chunk_tokens=4)
    assert (got - full[positions]).abs().max() < 1e-5
    assert entropies_at(h, weight, []).numel() == 0
    with pytest.raises(ValueError):
        entropies_at(h, weight, [0])  # no prediction for the first token
    with pytest.raises(ValueError):
        entropies_at(h, weight, [h.shape[0]])
