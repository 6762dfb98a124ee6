"""A shipped pi_0 (pipelines/world/shipped_base.py): a base written into the assets folder under its
cache key is what a first run installs instead of building it (float32 weights equal to the shipped
bfloat16 ones), only for the profile and corpus that name it, never when a file changed, and
`prepare-base --rebuild` builds by the recipe all the same. The embedded default's own shipped
pi_0 must be the one configs/tiny.yaml names, and copy at D = 256. (tests/test_pi0_recipe.py
checks that the recipe still copies.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from base_checks import BASE_COPY_GAIN_MIN, heldout_blocks, heldout_copy_gain

from pipelines.core.errors import UserError
from pipelines.world import shipped_base
from pipelines.world import world as world_module

REPO = Path(__file__).resolve().parents[1]


class BuildStarted(Exception):
    pass


@pytest.fixture
def no_build(monkeypatch):
    def refuse(*args, **kwargs):
        raise BuildStarted

    monkeypatch.setattr(world_module, "_build_base", refuse)  # a fault: a build would start


@pytest.fixture(scope="module")
def shipped_test_base(tiny_world, test_config, tmp_path_factory):
    """The test profile's base shipped into a temporary assets folder."""
    assets = tmp_path_factory.mktemp("assets")
    model_dir = Path(tiny_world.model_dir)
    blocks = heldout_blocks(test_config, tiny_world.corpus_dir, model_dir)
    metrics = shipped_base.ship(model_dir, blocks, 8, assets / model_dir.name)
    return assets, model_dir, metrics


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_first_run_installs_the_shipped_base_instead_of_building(
    shipped_test_base, load_test_profile, tmp_path, monkeypatch, no_build
):
    from safetensors.torch import load_file

    assets, built, metrics = shipped_test_base
    monkeypatch.setattr(shipped_base, "ASSETS", assets)
    cfg = load_test_profile(f"run.cache_dir={tmp_path}")  # an empty cache
    world = world_module.ensure_world(cfg)
    assert world.model_dir == tmp_path / built.name
    assert world.metrics["shipped"]["weights_dtype"] == "bfloat16"
    assert world.metrics["shipped"]["heldout_ppl"] == metrics["shipped"]["heldout_ppl"]
    installed = load_file(world.model_dir / "model.safetensors")
    original = load_file(built / "model.safetensors")
    assert installed.keys() == original.keys()
    for k, v in original.items():
        assert installed[k].dtype == torch.float32
        assert torch.equal(installed[k], v.to(torch.bfloat16).float())
    for name in ("config.json", "tokenizer.json"):
        assert (world.model_dir / name).read_bytes() == (built / name).read_bytes()
    # bfloat16 rounding barely moves the model (measured on the rounded weights when shipped)
    ratio = metrics["shipped"]["heldout_ppl"] / metrics["heldout_ppl"]
    assert 0.98 < ratio < 1.02, ratio

    with pytest.raises(BuildStarted):  # --rebuild builds by the recipe, shipped or not
        world_module.ensure_world(cfg, rebuild=True)
    assert (world.model_dir / "model.safetensors").is_file()  # the failed rebuild kept it


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_another_profile_or_a_changed_file_gets_no_shipped_base(
    shipped_test_base, load_test_profile, tmp_path, monkeypatch, no_build
):
    assets, built, _ = shipped_test_base
    monkeypatch.setattr(shipped_base, "ASSETS", assets)
    other = load_test_profile(f"run.cache_dir={tmp_path / 'a'}", "pretrain.lr=0.001")
    with pytest.raises(BuildStarted):  # another recipe: another key, nothing shipped for it
        world_module.ensure_world(other)
    copy = shutil.copytree(assets / built.name, tmp_path / "b" / built.name)
    weights = bytearray((copy / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(weights))
    monkeypatch.setattr(shipped_base, "ASSETS", tmp_path / "b")
    cfg = load_test_profile(f"run.cache_dir={tmp_path / 'c'}")
    with pytest.raises(UserError, match="model.safetensors' is missing or changed"):
        world_module.ensure_world(cfg)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_embedded_defaults_shipped_pi0_is_the_one_its_profile_names_and_copies(
    ray_local, tmp_path
):
    """configs/tiny.yaml's cache key names a shipped folder whose files match their sha256, and
    the installed weights, re-measured here on held-out text, copy at D = 256 (>= 1 nat: a
    model without induction heads measures 0.00) and beat the unigram's perplexity."""
    import json
    import math

    from transformers import AutoModelForCausalLM

    from pipelines.core.config import load_config
    from pipelines.world.base_model import mean_nll

    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"run.output_dir={tmp_path}"])
    corpus_dir = world_module.ensure_corpus(cfg)
    key = world_module.base_dir(cfg, corpus_dir).name
    src = shipped_base.ASSETS / key
    assert shipped_base.shipped_for(tmp_path / key) == src, f"nothing shipped for {key}"
    shipped_base.verify_shipped(src)
    metrics = shipped_base.install_shipped(src, tmp_path / key)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / key), dtype=torch.float32)
    blocks = heldout_blocks(cfg, corpus_dir, tmp_path / key)
    gain = heldout_copy_gain(model, blocks)
    ppl = math.exp(mean_nll(model, blocks, cfg.pretrain.batch_size))
    print("shipped tiny pi_0:", json.dumps({"gain_256": gain, "heldout_ppl": ppl}))
    assert gain["gain"] >= BASE_COPY_GAIN_MIN, gain
    assert ppl < metrics["unigram_ppl"], (ppl, metrics["unigram_ppl"])
