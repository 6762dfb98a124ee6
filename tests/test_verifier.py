"""Verification: the entropies it measures are the exact ones, r and labels follow from them,
and an unrelated chunk is a hard negative.

Not tested here (see the issue note): that a chunk holding the continuation of a rare sequence
is a positive. That needs a base that copies from context (induction), and the embedded tiny
base does not learn to within its pretraining budget: measured r ~ 0 for such a chunk."""

from __future__ import annotations

import pytest
import torch

from actors.hf_backend import HFBackend
from actors.verifier import Verifier, label_of
from pipelines.entropy import naive_token_entropies, token_entropies
from pipelines.tokenizer import load_tokenizer

PREFIX = "KING HENRY. Now, lords, for France; the enterprise whereof shall be to you. "
OTHER = "The quality of mercy is not strain'd; it droppeth as the gentle rain from heaven. "


@pytest.fixture(scope="module")
def case(tiny_world):
    tok = load_tokenizer(tiny_world.model_dir)
    gen = torch.Generator().manual_seed(7)
    rare = torch.randint(300, len(tok), (24,), generator=gen).tolist()  # unpredictable tokens
    doc_ids = tok(PREFIX)["input_ids"] + rare
    start = len(doc_ids) - len(rare)
    positions = [start + 10, start + 18]
    backend = HFBackend(tiny_world.model_dir)
    h = token_entropies(backend.hidden_states([doc_ids])[0], backend.lm_head_weight(), 64)
    doc = {
        "doc_id": "seed",
        "input_ids": doc_ids,
        "positions": positions,
        "position_entropies": [float(h[p]) for p in positions],
    }
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
