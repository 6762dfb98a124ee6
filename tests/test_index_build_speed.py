"""The index build's two speed-ups (issue 28 item 2; bench/index_build.py measures them): on one
node the build embeds on every CPU free then, and where the CPU multiplies bfloat16 natively it
embeds under bfloat16 autocast, vectors that agree with float32's and carry their own build key."""

from __future__ import annotations

import numpy as np
import pytest

from actors.embedder import SentenceEncoder, native_bf16, resolve_dtype
from pipelines.core.config import IndexSection
from pipelines.world.build_index import build_cpus, build_key

TEXTS = [
    "To be, or not to be, that is the question.",
    "Now is the winter of our discontent made glorious summer by this sun of York.",
    "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him.",
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.",
    "The quality of mercy is not strained; it droppeth as the gentle rain from heaven.",
] * 4


@pytest.mark.timeout(120)
def test_the_build_takes_every_cpu_free_on_one_node(ray_local):
    import time

    # the check needs one whole CPU to hold: wait for what earlier tests still release, then fail
    # (never skip: a skipped check proves nothing)
    deadline = time.monotonic() + 60
    while (free := int(ray_local.available_resources().get("CPU", 0.0))) < 1:
        assert time.monotonic() < deadline, (
            f"no whole CPU free on the test Ray in 60 s: {ray_local.available_resources()}"
        )
        time.sleep(1)
    assert build_cpus(0.25, wait_s=1.0) == max(0.25, float(free))

    @ray_local.remote(num_cpus=1)
    class Holder:
        def ready(self):
            return True

    holder = Holder.remote()
    ray_local.get(holder.ready.remote())
    try:  # the CPU another actor holds is not taken
        assert build_cpus(0.25, wait_s=0.3) == max(0.25, float(free - 1))
    finally:
        ray_local.kill(holder)


@pytest.mark.timeout(300)
def test_bfloat16_embeddings_agree_with_float32():
    fp32 = SentenceEncoder("all-MiniLM-L6-v2", 8, 2, "float32").embed(TEXTS)
    bf16 = SentenceEncoder("all-MiniLM-L6-v2", 8, 2, "bfloat16").embed(TEXTS)
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    assert (fp32 * bf16).sum(1).min() >= 0.999  # measured on the corpus: >= 0.9999
    assert np.abs(fp32 - bf16).max() > 1e-4  # it did run in bfloat16


def test_auto_is_bfloat16_exactly_where_the_cpu_does_it_natively():
    assert resolve_dtype("auto") == ("bfloat16" if native_bf16() else "float32")
    assert resolve_dtype("float32") == "float32"
    with pytest.raises(ValueError, match="expected auto"):
        resolve_dtype("int8")


def test_the_build_key_names_the_embedding_dtype(tmp_path):
    ids, cfg = ["a", "b"], IndexSection()
    assert build_key(ids, tmp_path, cfg, "bfloat16") != build_key(ids, tmp_path, cfg, "float32")
