"""Verification: the entropies it measures are the exact ones, r and labels follow from them, an
unrelated chunk is a hard negative, and a chunk holding the continuation of a rare sequence is a
positive at the default thresholds (τ_pos 0.10, τ_neg 0.02: ours; EntropyLong's ε is 0.4 and no
paper gives τ_neg), its median r above 5 τ_pos — for a policy that copies from context.

The test world's pi_0 (the shipped base) copies, but not cleanly enough for a label-by-label proof:
on these cases (mapped onto its 512 most frequent tokens) its r of the continuation chunk is 0.26 at
the 10th percentile and |r| of an unrelated chunk 0.029 at the 90th, above tau_neg (measured
2026-12-05). So the copy case uses a second real policy trained for exactly that: a 2-layer
Qwen2 taught to continue repeated random spans (tests/copying_policy.py; its training stops only
once it both copies and ignores unrelated context, measured on held-out cases of the kind tested
here; shipped in tests/assets/copier and measured again by the fixture on every run)."""

from __future__ import annotations

import pytest
import torch
from copying_policy import VOCAB, copy_case

from actors.hf_backend import HFBackend
from actors.verifier import Verifier, label_of
from pipelines.core.entropy import naive_token_entropies, token_entropies
from pipelines.core.records import Candidate, ScreenedDoc
from pipelines.driver.workers import verifier_spec
from pipelines.world.tokenizer import load_tokenizer

PREFIX = "KING HENRY. Now, lords, for France; the enterprise whereof shall be to you. "
OTHER = "The quality of mercy is not strain'd; it droppeth as the gentle rain from heaven. "


def _seed_doc(backend: HFBackend, doc_ids: list[int], positions: list[int]) -> ScreenedDoc:
    """A screened document as the verifier receives it: positions and their entropies (no c)."""
    h = token_entropies(backend.hidden_states([doc_ids])[0], backend.lm_head_weight(), 64)
    ents = [float(h[p]) for p in positions]
    return ScreenedDoc("seed", doc_ids, positions, ents, [], 0.0, 0.0, 0.0)


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
    return doc, copy, backend


@pytest.fixture(scope="module")
def verifier(test_config, tiny_world, ray_local):
    spec = verifier_spec(test_config, 0)
    actor = ray_local.remote(Verifier).remote(spec, test_config.verify, str(tiny_world.model_dir))
    yield actor
    ray_local.kill(actor)


def test_entropy_with_chunk_equals_full_sequence_reference(case, verifier):
    import ray

    doc, copy, backend = case
    cand = Candidate("copy", copy, 0.9, doc.positions)
    [res] = ray.get(verifier.verify.remote(doc, [cand]))
    full = copy + doc.input_ids  # the whole sequence, no truncation
    ref = naive_token_entropies(backend.hidden_states([full])[0], backend.lm_head_weight())
    expected = [float(ref[len(copy) + t]) for t in doc.positions]
    assert res.entropies_with == pytest.approx(expected, abs=1e-5)
    h0 = torch.tensor(doc.position_entropies)
    r = float(((h0 - torch.tensor(expected)) / h0).mean())
    assert res.r == pytest.approx(r, abs=1e-5)


def test_labels_follow_thresholds():
    assert label_of(0.3, 0.1, 0.02) == "positive"
    assert label_of(0.1, 0.1, 0.02) == "positive"
    assert label_of(0.05, 0.1, 0.02) == "discarded"
    assert label_of(0.02, 0.1, 0.02) == "negative"
    assert label_of(-0.2, 0.1, 0.02) == "negative"


@pytest.fixture(scope="module")
def copier(copier_dir, test_config, ray_local):
    spec = verifier_spec(test_config, 0)
    actor = ray_local.remote(Verifier).remote(spec, test_config.verify, str(copier_dir))
    yield copier_dir, actor
    ray_local.kill(actor)


def test_chunk_with_the_continuation_is_a_positive(copier, test_config):
    """c holds a rare key followed by its continuation; d holds the key and then the same
    continuation: a policy that copies predicts the continuation only with c in front. An
    unrelated chunk (no token of d) is a hard negative. 16 cases from the generator the copier's
    stopping rule was measured on (other seeds): the claims are on the population (median and
    share labelled right), which the stopping rule holds with margin on any CPU."""
    import statistics

    import ray

    model_dir, verifier = copier
    tau_pos, tau_neg = 0.10, 0.02  # the defaults (ours; README, "Thresholds" in Methods)
    backend = HFBackend(model_dir)
    r_copy, r_other, labels_copy, labels_other = [], [], [], []
    for seed in range(11, 27):
        case = copy_case(torch.Generator().manual_seed(seed))
        doc = _seed_doc(backend, case.doc, case.positions)
        # Without c the continuation is unpredictable: entropy near uniform on average.
        uniform = torch.log(torch.tensor(float(VOCAB))).item()
        assert sum(doc.position_entropies) / len(case.positions) > 0.6 * uniform, doc
        cands = [
            Candidate("copy", case.with_continuation, 0.9, case.positions),
            Candidate("other", case.unrelated, 0.8, case.positions),
        ]
        results = ray.get(verifier.verify.remote(doc, cands))
        by_id = {r.chunk_id: r for r in results}
        r_copy.append(by_id["copy"].r)
        r_other.append(by_id["other"].r)
        labels_copy.append(by_id["copy"].label)
        labels_other.append(by_id["other"].label)
        v = test_config.verify
        for res in results:  # labels follow the configured thresholds
            assert res.label == label_of(res.r, v.tau_pos, v.tau_neg), res
    assert statistics.median(r_copy) >= 5 * tau_pos, r_copy  # clearly, not barely
    assert statistics.median(abs(r) for r in r_other) <= tau_neg, r_other
    assert sum(label_of(r, tau_pos, tau_neg) == "positive" for r in r_copy) >= 12, r_copy
    assert sum(label_of(r, tau_pos, tau_neg) == "negative" for r in r_other) >= 12, r_other
