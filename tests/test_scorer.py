"""EntropyScorer actors on real engines: vLLM == HF == naive full-logits reference, before and
after loading new weights. One vLLM engine for the whole session (start-up ~20 s on CPU)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow
LENGTHS = (5, 64, 200, 511)  # documents of different lengths (test profile max_doc_tokens 512)


def _reference(model_dir, seqs: list[list[int]]) -> list[np.ndarray]:
    """Independent oracle: HF full logits in float64 -> entropy, aligned out[t] from logits[t-1]."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for ids in seqs:
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
            ent = -(logp.exp() * logp).sum(-1).numpy()
            out.append(np.concatenate([[np.nan], ent[:-1]]).astype(np.float32))
    return out


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape and np.isnan(x[0]) and np.isnan(y[0])
    return max(float(np.abs(x[1:] - y[1:]).max()) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="session")
def scorer_docs(tiny_world):
    from pipelines.world.ingest import read_docs
    from pipelines.world.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_world.model_dir)
    table = read_docs(tiny_world.corpus_dir, "train")
    ids = tok(table["text"].to_pylist()[:40])["input_ids"]
    long_docs = [x for x in ids if len(x) >= max(LENGTHS)]
    return [{"doc_id": f"d{n}", "input_ids": long_docs[i][:n]} for i, n in enumerate(LENGTHS)]


@pytest.fixture(scope="session")
def new_checkpoint(tiny_world, scorer_docs, tmp_path_factory):
    """pi_1: the tiny model trained a few steps (same config), saved like a stage checkpoint."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("pi1")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_world.model_dir), dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = torch.tensor([scorer_docs[-1]["input_ids"]])
    for _ in range(3):
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(str(out))
    for f in tiny_world.model_dir.glob("tokenizer*"):
        shutil.copy(f, out)
    return out


@pytest.fixture(scope="session")
def scorer_pair(test_config, tiny_world, ray_local):
    """(hf actor, vllm actor), each started once for the session."""
    from pipelines.driver.workers import create_scorers

    def with_backend(kind):
        return dataclasses.replace(
            test_config, screen=dataclasses.replace(test_config.screen, backend=kind)
        )

    hf = create_scorers(with_backend("hf"), tiny_world.model_dir, num=1)[0]
    vllm = create_scorers(with_backend("vllm"), tiny_world.model_dir, num=1)[0]
    ray_local.get([hf.policy_version.remote(), vllm.policy_version.remote()])  # started
    yield hf, vllm
    for actor in (hf, vllm):
        ray_local.kill(actor)


def _score(ray, actor, docs) -> list[np.ndarray]:
    return [r["entropy"] for r in ray.get(actor.score.remote(docs))]


def _ensure(ray, actor, model_dir, version):
    if ray.get(actor.policy_version.remote()) != version:
        ray.get(actor.load_weights.remote(str(model_dir), version))


def test_vllm_matches_hf_and_reference(ray_local, scorer_pair, scorer_docs, tiny_world):
    hf, vllm = scorer_pair
    for actor in scorer_pair:
        _ensure(ray_local, actor, tiny_world.model_dir, 0)
    ref = _reference(tiny_world.model_dir, [d["input_ids"] for d in scorer_docs])
    got_hf, got_vllm = _score(ray_local, hf, scorer_docs), _score(ray_local, vllm, scorer_docs)
    assert [len(e) for e in got_vllm] == list(LENGTHS)
    assert all(e.dtype == np.float32 for e in got_vllm)
    assert _max_diff(got_vllm, got_hf) < 1e-4
    assert _max_diff(got_hf, ref) < 1e-4 and _max_diff(got_vllm, ref) < 1e-4


def test_probe_and_version(ray_local, scorer_pair, scorer_docs, tiny_world):
    _, vllm = scorer_pair
    _ensure(ray_local, vllm, tiny_world.model_dir, 0)
    assert ray_local.get(vllm.policy_version.remote()) == 0
    ids = scorer_docs[1]["input_ids"]
    probe = ray_local.get(vllm.probe_entropy.remote(ids))
    full = _score(ray_local, vllm, [scorer_docs[1]])[0]
    assert len(probe) == len(ids) - 1 and np.allclose(probe, full[1:], atol=1e-6)


def test_load_weights_both_backends_follow(ray_local, scorer_pair, scorer_docs, new_checkpoint):
    seqs = [d["input_ids"] for d in scorer_docs]
    ref_new = _reference(new_checkpoint, seqs)
    before = _score(ray_local, scorer_pair[1], scorer_docs)
    assert _max_diff(before, ref_new) > 1e-2  # the new checkpoint really is different
    for actor in scorer_pair:
        assert ray_local.get(actor.load_weights.remote(str(new_checkpoint), 1)) == 1
        assert ray_local.get(actor.policy_version.remote()) == 1
        assert _max_diff(_score(ray_local, actor, scorer_docs), ref_new) < 1e-4


def test_hf_backend_loads_a_state_dict(tiny_world, scorer_docs, new_checkpoint):
    from transformers import AutoModelForCausalLM

    from actors.hf_backend import HFBackend
    from pipelines.core.entropy import token_entropies

    backend = HFBackend(tiny_world.model_dir)
    state = AutoModelForCausalLM.from_pretrained(str(new_checkpoint)).state_dict()
    backend.load_weights(state, version=1)
    assert backend.version == 1
    seqs = [d["input_ids"] for d in scorer_docs]
    got = [
        token_entropies(h, backend.lm_head_weight(), 64).numpy()
        for h in backend.hidden_states(seqs)
    ]
    assert _max_diff(got, _reference(new_checkpoint, seqs)) < 1e-4


def test_vllm_rejects_state_dict(ray_local, scorer_pair):
    with pytest.raises(NotImplementedError):
        ray_local.get(scorer_pair[1].load_weights.remote({"x": torch.zeros(1)}, 5))


def _load_config_variant(ray, vllm, new_checkpoint, docs, name: str, change, version: int):
    """Load a copy of pi_1 whose config.json `change` altered; check the engine then serves the
    variant (== an HF reference of it, which differs from pi_1's). Returns engine restarts."""
    out = new_checkpoint.parent / name
    shutil.copytree(new_checkpoint, out, dirs_exist_ok=True)
    cfg = json.loads((out / "config.json").read_text())
    change(cfg)
    (out / "config.json").write_text(json.dumps(cfg))
    seqs = [d["input_ids"] for d in docs]
    ref = _reference(out, seqs)
    assert _max_diff(ref, _reference(new_checkpoint, seqs)) > 1e-3  # the change matters
    restarts = ray.get(vllm.engine_restarts.remote())
    assert ray.get(vllm.load_weights.remote(str(out), version)) == version
    assert _max_diff(_score(ray, vllm, docs), ref) < 1e-4
    return ray.get(vllm.engine_restarts.remote()) - restarts


def test_vllm_follows_a_raised_rope_base_in_place(
    ray_local, scorer_pair, scorer_docs, new_checkpoint
):
    # reload_weights does not re-read config.json: a raised RoPE base (what each stage does) is
    # applied by the worker extension without restarting the engine; without it vLLM silently
    # keeps the old rotary cache.
    def raise_rope(cfg):
        cfg.setdefault("rope_parameters", {})["rope_theta"] = 160_000.0
        cfg.pop("rope_theta", None)
        cfg["max_position_embeddings"] = 4096

    vllm = scorer_pair[1]
    args = (ray_local, vllm, new_checkpoint, scorer_docs, "pi2_rope", raise_rope, 2)
    assert _load_config_variant(*args) == 0  # no restart


def test_vllm_restarts_for_other_architecture_changes(
    ray_local, scorer_pair, scorer_docs, new_checkpoint
):
    def change_norm(cfg):
        cfg["rms_norm_eps"] = 0.5

    vllm = scorer_pair[1]
    args = (ray_local, vllm, new_checkpoint, scorer_docs, "pi3_eps", change_norm, 3)
    assert _load_config_variant(*args) == 1


def test_rope_only_change_detects_what_can_be_updated_in_place():
    from actors.vllm_backend import rope_only_change

    old = {
        "hidden_size": 64,
        "max_position_embeddings": 512,
        "rope_parameters": {"rope_theta": 1e4, "rope_type": "default"},
    }
    raised = old | {
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_theta": 4e4, "rope_type": "default"},
    }
    assert rope_only_change(old, raised) == 4e4
    assert rope_only_change(old, raised | {"hidden_size": 128}) is None  # not only the base
    yarn = raised | {"rope_parameters": {"rope_theta": 4e4, "rope_type": "yarn", "factor": 4.0}}
    assert rope_only_change(old, yarn) is None  # scaled RoPE: restart instead
    legacy = {"hidden_size": 64, "rope_theta": 1e4}
    assert rope_only_change(legacy, legacy | {"rope_theta": 2e4}) == 2e4
