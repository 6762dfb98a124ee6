"""Verification: the entropies it measures are the exact ones, r and labels follow from them, an
unrelated chunk is a hard negative, and a chunk holding the continuation of a rare sequence is a
positive at the paper's thresholds — for a policy that copies from context.

The embedded tiny base does not copy (no induction heads within its pretraining budget), so the
copy case uses a second real policy trained here for exactly that: a 2-layer Qwen2 taught to
continue repeated random spans (induction forms after ~600-1300 steps; ~2.5 min on 2 cores)."""

from __future__ import annotations

import pytest
import torch

from actors.hf_backend import HFBackend
from actors.verifier import Verifier, label_of
from pipelines.entropy import naive_token_entropies, token_entropies
from pipelines.tokenizer import load_tokenizer

PREFIX = "KING HENRY. Now, lords, for France; the enterprise whereof shall be to you. "
OTHER = "The quality of mercy is not strain'd; it droppeth as the gentle rain from heaven. "


def _seed_doc(backend: HFBackend, doc_ids: list[int], positions: list[int]) -> dict:
    """A screened document as the verifier receives it: positions and their entropies (no c)."""
    h = token_entropies(backend.hidden_states([doc_ids])[0], backend.lm_head_weight(), 64)
    return {
        "doc_id": "seed",
        "input_ids": doc_ids,
        "positions": positions,
        "position_entropies": [float(h[p]) for p in positions],
    }


@pytest.fixture(scope="module")
def case(tiny_world):
    tok = load_tokenizer(tiny_world.model_dir)
    gen = torch.Generator().manual_seed(7)
    rare = torch.randint(300, len(tok), (24,), generator=gen).tolist()  # unpredictable tokens
    doc_ids = tok(PREFIX)["input_ids"] + rare
    start = len(doc_ids) - len(rare)
    positions = [start + 10, start + 18]
    backend = HFBackend(tiny_world.model_dir)
    doc = _seed_doc(backend, doc_ids, positions)
    copy = tok(OTHER)["input_ids"][:8] + rare + tok(OTHER)["input_ids"][8:16]
    unrelated = tok(OTHER * 2)["input_ids"][:40]
    return doc, copy, unrelated, backend


@pytest.fixture(scope="module")
def verifier(test_config, tiny_world, ray_local):
    actor = ray_local.remote(Verifier).remote(test_config, str(tiny_world.model_dir))
    yield actor
    ray_local.kill(actor)


def test_unrelated_chunk_is_a_hard_negative(case, verifier, test_config):
    import ray

    doc, _, unrelated, _ = case
    cand = {
        "chunk_id": "other",
        "input_ids": unrelated,
        "similarity": 0.8,
        "positions": doc["positions"],
    }
    [res] = ray.get(verifier.verify.remote(doc, [cand]))
    assert res["r"] <= test_config.verify.tau_neg, res
    assert res["label"] == "negative"


def test_entropy_with_chunk_equals_full_sequence_reference(case, verifier):
    import ray

    doc, copy, _, backend = case
    cand = {"chunk_id": "copy", "input_ids": copy, "similarity": 0.9, "positions": doc["positions"]}
    [res] = ray.get(verifier.verify.remote(doc, [cand]))
    full = copy + doc["input_ids"]  # the whole sequence, no truncation
    ref = naive_token_entropies(backend.hidden_states([full])[0], backend.lm_head_weight())
    expected = [float(ref[len(copy) + t]) for t in doc["positions"]]
    assert res["entropies_with"] == pytest.approx(expected, abs=1e-5)
    h0 = torch.tensor(doc["position_entropies"])
    r = float(((h0 - torch.tensor(expected)) / h0).mean())
    assert res["r"] == pytest.approx(r, abs=1e-5)


def test_labels_follow_thresholds():
    assert label_of(0.3, 0.1, 0.02) == "positive"
    assert label_of(0.1, 0.1, 0.02) == "positive"
    assert label_of(0.05, 0.1, 0.02) == "discarded"
    assert label_of(0.02, 0.1, 0.02) == "negative"
    assert label_of(-0.2, 0.1, 0.02) == "negative"


COPIER_VOCAB = 512


def _train_copier(out_dir, max_steps: int = 2500) -> float:
    """A real Qwen2 policy that copies: rows of random tokens in which a 32-token span recurs at
    a random distance. Loss = mean over all tokens (calibrated, near-uniform where nothing can be
    copied) + mean over the recurring tokens (the copy signal, which alone would take many more
    steps to break through). Returns the held-out copy NLL (uniform: log 512 = 6.24)."""
    import torch.nn.functional as F
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    v, t, s = COPIER_VOCAB, 128, 32
    cfg = Qwen2Config(
        vocab_size=v,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        intermediate_size=256,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)

    def batch(n: int, gen: torch.Generator):
        x = torch.randint(0, v, (n, t), generator=gen)
        labels = torch.full((n, t), -100)
        for i in range(n):
            a = int(torch.randint(0, t - 2 * s + 1, (1,), generator=gen))
            b = a + s + int(torch.randint(0, t - 2 * s - a + 1, (1,), generator=gen))
            x[i, b : b + s] = x[i, a : a + s]
            labels[i, b + 1 : b + s] = x[i, b + 1 : b + s]
        return x, labels

    held_out = batch(128, torch.Generator().manual_seed(123))
    train_gen = torch.Generator().manual_seed(1)
    nll, settle = float("inf"), None
    for step in range(max_steps):
        x, labels = batch(64, train_gen)
        logits = model(input_ids=x).logits[:, :-1]
        nll_all = F.cross_entropy(logits.reshape(-1, v), x[:, 1:].reshape(-1), reduction="none")
        copy = labels[:, 1:].reshape(-1) != -100
        loss = nll_all.mean() + nll_all[copy].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 99:
            with torch.no_grad():
                nll = model(input_ids=held_out[0], labels=held_out[1]).loss.item()
            if settle is None and nll < 0.15:
                settle = step + 400  # copying works: settle the calibration a little longer
        if settle is not None and step >= settle:
            break
    model.save_pretrained(str(out_dir))
    return nll


@pytest.fixture(scope="module")
def copier(tmp_path_factory, test_config, ray_local):
    out = tmp_path_factory.mktemp("copier")
    nll = _train_copier(out)
    assert nll < 0.5, f"the copy policy did not learn to copy (held-out copy NLL {nll:.2f})"
    actor = ray_local.remote(Verifier).remote(test_config, str(out))
    yield out, actor
    ray_local.kill(actor)


def test_chunk_with_the_continuation_is_a_positive(copier, test_config):
    """c holds a rare key followed by its continuation; d holds the key and then the same
    continuation: a policy that copies predicts the continuation only with c in front."""
    import dataclasses

    import ray

    model_dir, verifier = copier
    cfg = dataclasses.replace(
        test_config, verify=dataclasses.replace(test_config.verify, tau_pos=0.10, tau_neg=0.02)
    )  # the paper's thresholds
    gen = torch.Generator().manual_seed(11)
    own = torch.randperm(COPIER_VOCAB // 2, generator=gen).tolist()  # d and c: tokens < 256
    key, cont, noise = own[:8], own[8:24], own[24:]
    doc_ids = noise[:40] + key + cont + noise[40:60]
    start = 40 + len(key)
    positions = [start + 2, start + 6, start + 10, start + 14]
    doc = _seed_doc(HFBackend(model_dir), doc_ids, positions)
    # Without c the continuation is unpredictable: entropy near uniform on average.
    uniform = torch.log(torch.tensor(float(COPIER_VOCAB))).item()
    assert sum(doc["position_entropies"]) / len(positions) > 0.6 * uniform, doc
    with_continuation = noise[60:70] + key + cont + noise[70:80]
    unrelated = torch.randint(COPIER_VOCAB // 2, COPIER_VOCAB, (44,), generator=gen).tolist()
    cands = [
        {"chunk_id": "copy", "input_ids": with_continuation, "similarity": 0.9},
        {"chunk_id": "other", "input_ids": unrelated, "similarity": 0.8},
    ]
    results = ray.get(verifier.verify.remote(doc, [c | {"positions": positions} for c in cands]))
    by_id = {r["chunk_id"]: r for r in results}
    tau_pos, tau_neg = cfg.verify.tau_pos, cfg.verify.tau_neg
    assert by_id["copy"]["r"] >= 5 * tau_pos, by_id["copy"]  # clearly, not barely
    assert label_of(by_id["copy"]["r"], tau_pos, tau_neg) == "positive"
    assert by_id["other"]["r"] <= tau_neg, by_id["other"]
    assert label_of(by_id["other"]["r"], tau_pos, tau_neg) == "negative"
