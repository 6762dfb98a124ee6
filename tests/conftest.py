"""Shared fixtures: one local Ray and one small real world (corpus, tokenizer, pi_0) per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def test_config(tmp_path_factory):
    """The test profile writing under a temp dir; the base-model cache is shared (keyed)."""
    from pipelines.config import load_config

    out = tmp_path_factory.mktemp("runs")
    return load_config(
        REPO / "configs" / "test.yaml",
        [f"run.output_dir={out}", f"run.cache_dir={REPO / 'runs' / 'cache'}"],
    )


@pytest.fixture(scope="session")
def tiny_world(test_config, ray_local):
    from pipelines.world import ensure_world

    return ensure_world(test_config)
