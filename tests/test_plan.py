"""`policylong plan`: the model shape it computes is the real one, the work model responds to
the config the way the method does, the placement is checked, and it starts nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.core.config import load_config
from pipelines.core.errors import UserError
from pipelines.driver.plan import Assumptions, ModelShape, model_shape, plan

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "configs" / "qwen2.5-3b-128k.yaml"
QWEN_SHAPE = str(REPO / "configs" / "shapes" / "qwen2.5-3b.json")


def test_qwen_shape_has_qwens_parameter_count():
    shape = model_shape(load_config(PAPER), QWEN_SHAPE)
    assert shape.params == pytest.approx(3.09e9, rel=0.01)  # Qwen2.5-3B: 3.09 B
    assert shape.params - shape.non_embedding_params == 151936 * 2048  # tied embeddings


def test_embedded_base_shape_matches_the_built_model(tiny_world):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_world.model_dir))
    config = json.loads((Path(tiny_world.model_dir) / "config.json").read_text())
    named = model.named_parameters()
    counted = sum(p.numel() for n, p in named if "norm" not in n and not n.endswith("bias"))
    assert ModelShape.from_hf_config(config).params == counted  # norms and biases: no FLOPs


def test_work_follows_the_method_and_the_budget():
    cfg = load_config(PAPER)
    a = Assumptions(doc_tokens=2048)
    pl = plan(cfg, a, QWEN_SHAPE)
    concat = plan(load_config(PAPER, ["stages.method=concat"]), a, QWEN_SHAPE)
    assert all(s["verifier_flops"] > 0 for s in pl["stages"])
    assert all(s["verifier_flops"] == s["scorer_flops"] == 0 for s in concat["stages"])
    assert set(concat["placement"]) == {"trainer", "shard"}  # the shards sample its fillers
    # equal tokens per stage, longer sequences: more attention work per token
    per_token = [s["trainer_flops"] / s["tokens_trained"] for s in pl["stages"]]
    assert per_token == sorted(per_token) and per_token[0] < per_token[-1]
    few = plan(load_config(PAPER, ["stages.seed_docs_per_stage=1000"]), a, QWEN_SHAPE)
    assert few["stages"][0]["expected_samples"] < few["stages"][0]["budget_samples"]


def test_ivf_pq_shrinks_the_index_to_its_code_bytes():
    cfg = load_config(PAPER)
    assert plan(cfg, Assumptions(), QWEN_SHAPE)["index_bytes_per_vector"] == 48 + 8
    flat = load_config(PAPER, ["index.pq_bytes=0"])
    assert plan(flat, Assumptions(), QWEN_SHAPE)["index_bytes_per_vector"] == 384 * 4 + 8


def test_ivf_pq_index_builds_and_finds_neighbours():
    import faiss

    from pipelines.core.config import IndexSection
    from pipelines.world.build_index import make_faiss_index

    faiss.omp_set_num_threads(1)  # no spinning threads on a busy machine
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((64, 384)).astype(np.float32)
    x = centres[rng.integers(0, 64, 4000)] + 0.3 * rng.standard_normal((4000, 384))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    cfg = IndexSection(flat_max_vectors=1000, ivf_nlist=32, pq_bytes=48, nprobe=16)
    index, info = make_faiss_index(x, cfg, seed=0)
    assert info["index_type"] == "ivf_pq" and info["pq_bytes"] == 48
    empty = faiss.clone_index(index)
    empty.reset()  # the trained quantizers alone: a fixed cost, whatever the pool size
    per_vector = (len(faiss.serialize_index(index)) - len(faiss.serialize_index(empty))) / len(x)
    assert per_vector <= 48 + 8 + 1, per_vector  # codes + ids
    index.nprobe = 16
    _, found = index.search(x[:50], 10)
    assert np.mean([i in row for i, row in enumerate(found)]) >= 0.95  # finds itself
    with pytest.raises(UserError, match="index.pq_bytes"):
        make_faiss_index(x, IndexSection(flat_max_vectors=1000, pq_bytes=50), seed=0)


def test_plan_cli_starts_nothing_and_prints_one_json_line(tmp_path):
    command = [sys.executable, "-m", "pipelines.cli", "plan", "--config", str(PAPER)]
    out = subprocess.run(
        command + ["--model-config", QWEN_SHAPE, "--set", f"run.output_dir={tmp_path / 'x'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["cluster_fit"]["fits"] and result["total_gpu_h"] > 0
    assert not (tmp_path / "x").exists()  # nothing written
    missing = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0
    assert "--model-config" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.timeout(120)
def test_index_size_is_never_a_made_up_zero(tmp_path):
    from pipelines.driver.plan import index_size

    cfg = load_config(PAPER, [f"run.output_dir={tmp_path}"])  # no index built there
    unknown = plan(cfg, Assumptions(), QWEN_SHAPE)
    assert unknown["index_gb_per_shard"] is None and "unknown" in index_size(unknown)
    known = plan(cfg, Assumptions(pool_chunks=10**9), QWEN_SHAPE)
    per_shard = 10**9 * (48 + 8) / cfg.index.num_shards / 1e9
    assert known["index_gb_per_shard"] == pytest.approx(per_shard)
    assert f"{per_shard:.2f} GB per shard" in index_size(known)
