"""`policylong plan`: what a run asks for and what it costs, before anything starts.

A small model of the work, stage by stage (every constant is printed with the result):

    documents screened   D_k = min(seed_docs_per_stage, budget_k / samples_per_doc)
    scorer FLOPs         D_k * doc_tokens * (2 N + 2 L c d + 2 d V)      exact entropy over V
    verifier FLOPs       D_k * positions_per_doc * candidates_per_position
                             * (chunk + doc_tokens / 2) * (2 N + 2 L c d)
    trainer FLOPs        budget_k * seq_len_k * (6 N + 6 L c d + 6 d V) (+ 1/3 recompute)

N = non-embedding parameters, L layers, d width, V vocabulary, c the mean causal context of a
token (half the sequence). GPU-seconds = FLOPs / (peak * MFU). Index memory per shard from the
configured FAISS type's bytes per vector; a weight sync = weight bytes / transport bandwidth.

The yields (samples per document, positions, candidates) and MFUs are assumptions the user can
set on the command line; the defaults for yields were measured on the embedded default's runs.
`calibrate` fits seconds per FLOP on measured runs and reports how well the FLOP model predicts
the busy seconds of other runs (bench/plan_calibration.py).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines.core.config import Config
from pipelines.core.errors import UserError
from pipelines.core.methods import method_spec
from pipelines.driver.plan_split import ROLES, Split, describe, propose
from pipelines.steps.assemble import document_window

BYTES_PER_VECTOR_EXTRA = 8  # FAISS ids


@dataclass(frozen=True)
class ModelShape:
    layers: int
    width: int
    vocab: int
    non_embedding_params: int
    params: int

    @classmethod
    def from_hf_config(cls, c: dict) -> ModelShape:
        d, layers, vocab = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
        heads, kv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
        head_dim = c.get("head_dim") or d // heads
        attn = d * heads * head_dim * 2 + d * kv * head_dim * 2  # q, o and k, v projections
        mlp = 3 * d * c["intermediate_size"]
        per_layer = attn + mlp
        embed = vocab * d * (1 if c.get("tie_word_embeddings", False) else 2)
        return cls(layers, d, vocab, layers * per_layer, layers * per_layer + embed)

    def forward_flops(self, context: float) -> float:
        """Per token, a forward of the body: matmuls plus causal attention at mean context."""
        return 2 * self.non_embedding_params + 2 * self.layers * context * self.width

    def head_flops(self) -> float:
        return 2 * self.width * self.vocab


@dataclass(frozen=True)
class Assumptions:
    samples_per_doc: float = 0.31  # measured: tiny policylong runs, 40 samples / 128 documents
    positions_per_doc: float = 3.6  # measured: 463 positions / 128 documents
    candidates_per_position: float = 3.9  # measured: top-k 4 minus chunks shared by positions
    doc_tokens: float = 0.0  # 0 = each stage's document window (assemble.document_window)
    peak_tflops: float = 989.0  # H100 SXM dense bf16
    mfu_inference: float = 0.30
    mfu_train: float = 0.40
    storage_gbps: float = 2.0  # checkpoint_dir: each node reads the checkpoint
    collective_gbps: float = 50.0  # NCCL broadcast
    pool_chunks: int = 0  # retrieval pool size; 0 = the built index's, if any, else unknown
    gpus: float = 0.0  # GPUs to split among the roles; 0 = the profile's total (plan_split.py)
    switch_s: float = 60.0  # time-sharing: one switch between constructing and training


def model_shape(cfg: Config, model_config: str | None = None) -> ModelShape:
    path = Path(model_config) if model_config else Path(cfg.model.path or "") / "config.json"
    if cfg.model.path or model_config:
        if not path.is_file():
            raise UserError(
                f"plan needs the model's HF config.json: '{path}' does not exist; pass "
                "--model-config FILE (configs/shapes/ has Qwen2.5-3B's)"
            )
        return ModelShape.from_hf_config(json.loads(path.read_text()))
    m = cfg.model  # the embedded base, built from these keys
    shape = {
        "hidden_size": m.hidden_size,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_heads,
        "num_key_value_heads": m.num_kv_heads,
        "intermediate_size": m.intermediate_size,
        "vocab_size": cfg.tokenizer.vocab_size,
        "tie_word_embeddings": True,
    }
    return ModelShape.from_hf_config(shape)


def bytes_per_vector(cfg: Config, dim: int = 384) -> int:
    """The configured index type's memory per vector (MiniLM: 384 dimensions)."""
    if cfg.index.pq_bytes:
        return cfg.index.pq_bytes + BYTES_PER_VECTOR_EXTRA
    return dim * 4 + BYTES_PER_VECTOR_EXTRA


def stage_work(cfg: Config, shape: ModelShape, a: Assumptions, k: int) -> dict:
    """FLOPs per role for stage k (see the module docstring)."""
    seq_len = cfg.stages.seq_lens[k]
    budget = max(1, cfg.stages.tokens_per_stage // seq_len)
    # each stage screens only the window its samples keep (pipelines/driver/construct.py)
    doc_tokens = a.doc_tokens or document_window(seq_len, cfg.screen.max_doc_tokens)
    screens = method_spec(cfg.stages.method).screens
    # None: no number of documents fills the budget at this yield
    needed = math.ceil(budget / a.samples_per_doc) if a.samples_per_doc > 0 else None
    docs = min(cfg.stages.seed_docs_per_stage, needed or cfg.stages.seed_docs_per_stage)
    docs = docs if screens else budget
    # A screening method keeps only documents with a verified dependency.
    samples = min(budget, math.floor(docs * a.samples_per_doc)) if screens else budget
    candidates = docs * a.positions_per_doc * a.candidates_per_position if screens else 0
    verified_tokens = candidates * (cfg.index.chunk_tokens + doc_tokens / 2)
    screened_tokens = docs * doc_tokens if screens else 0
    per_screened = shape.forward_flops(doc_tokens / 2) + shape.head_flops()
    train_per_token = 3 * (shape.forward_flops(seq_len / 2) + shape.head_flops())
    if cfg.train.gradient_checkpointing:
        train_per_token += shape.forward_flops(seq_len / 2)  # each layer's forward, again
    return {
        "stage": k,
        "seq_len": seq_len,
        "doc_tokens": doc_tokens,
        "budget_samples": budget,
        "expected_samples": samples,
        "seed_docs_needed": needed if screens else budget,
        "documents_screened": docs if screens else 0,
        "tokens_screened": screened_tokens,
        "candidates_verified": round(candidates),
        "tokens_verified": round(verified_tokens),
        "tokens_trained": samples * seq_len,
        "scorer_flops": screened_tokens * per_screened,
        "verifier_flops": verified_tokens * shape.forward_flops(doc_tokens / 2),
        "trainer_flops": samples * seq_len * train_per_token,
    }


def built_pool_chunks(cfg: Config) -> int | None:
    """The retrieval pool of this config's index if it is already built, else None. Builds
    nothing: only a corpus already ingested under the run and an index already in the cache."""
    corpus = cfg.run_dir / "corpus"
    want = {"source": cfg.corpus.source, "corpus_cfg": cfg.fingerprint("corpus")}
    stamp = corpus / "source.json"
    if not stamp.is_file() or json.loads(stamp.read_text()) != want:
        return None
    from pipelines.world.build_index import cached_index_dir
    from pipelines.world.world import base_dir

    tokenizer = Path(cfg.tokenizer.path or cfg.model.path or base_dir(cfg, corpus))
    manifest = cached_index_dir(cfg.index, cfg.run.cache_dir, corpus, tokenizer) / "manifest.json"
    return json.loads(manifest.read_text())["n_chunks"] if manifest.is_file() else None


def plan(cfg: Config, a: Assumptions, model_config: str | None = None) -> dict:
    """Placement, work and cost of every stage of `cfg`'s run; starts nothing."""
    from pipelines.driver.placement import resource_plan

    shape = model_shape(cfg, model_config)
    method = method_spec(cfg.stages.method)
    r = cfg.resources
    flops_per_s = a.peak_tflops * 1e12
    stages = []
    for k in range(len(cfg.stages.seq_lens)):
        w = stage_work(cfg, shape, a, k)
        hours = {
            "scorer_gpu_h": w["scorer_flops"] / (flops_per_s * a.mfu_inference) / 3600,
            "verifier_gpu_h": w["verifier_flops"] / (flops_per_s * a.mfu_inference) / 3600,
            "trainer_gpu_h": w["trainer_flops"] / (flops_per_s * a.mfu_train) / 3600,
        }
        # The roles overlap (stage wall ~ its busiest role, measured 1.15x on the tiny runs).
        per_role = [
            hours["scorer_gpu_h"] / max(1, r.scorer.count) if method.screens else 0.0,
            hours["verifier_gpu_h"] / max(1, r.verifier.count) if method.screens else 0.0,
            hours["trainer_gpu_h"] / max(1, r.trainer.count),
        ]
        stages.append(w | hours | {"wall_h": max(per_role)})
    weight_bytes = shape.params * (2 if cfg.model.dtype != "float32" else 4)
    gbps = a.collective_gbps if cfg.stages.weight_transport == "collective" else a.storage_gbps
    pool = a.pool_chunks or built_pool_chunks(cfg)
    per_actor = {role: getattr(r, role).gpus for role in ROLES}
    profile = Split(r.scorer.count, r.verifier.count, r.trainer.count)
    gpus = a.gpus or profile.gpus(per_actor)
    return {
        "model": asdict(shape),
        "method": method.name,
        "assumptions": asdict(a),
        "placement": resource_plan(cfg, method),
        "stages": stages,
        "total_gpu_h": sum(
            s["scorer_gpu_h"] + s["verifier_gpu_h"] + s["trainer_gpu_h"] for s in stages
        ),
        "sync_s": weight_bytes / (gbps * 1e9) if method.on_policy else 0.0,
        "index_bytes_per_vector": bytes_per_vector(cfg),
        "index_pool_chunks": pool,  # None: unknown (no index built, --pool-chunks not given)
        "index_gb_per_shard": pool * bytes_per_vector(cfg) / cfg.index.num_shards / 1e9
        if pool
        else None,
        "bottleneck": _bottleneck(stages, method.screens, r),
        "split": propose(stages, method.screens, profile, per_actor, gpus, a.switch_s),
    }


def _bottleneck(stages: list[dict], screens: bool, r) -> str:
    totals = {
        "training": sum(s["trainer_gpu_h"] for s in stages) / r.trainer.count,
        "verification": sum(s["verifier_gpu_h"] for s in stages) / r.verifier.count
        if screens
        else 0.0,
        "screening": sum(s["scorer_gpu_h"] for s in stages) / r.scorer.count if screens else 0.0,
    }
    return max(totals, key=totals.get)


def cluster_fit(placement: dict, cluster_yaml: Path) -> dict:
    """Whether the run's roles fit the cluster a ray_cluster.yaml describes at full size."""
    import yaml

    types = yaml.safe_load(cluster_yaml.read_text())["available_node_types"].values()
    have = {
        k: sum(t.get("max_workers", 0) * t["resources"].get(k, 0) for t in types)
        for k in ("CPU", "GPU")
    }
    need = {k: sum(p[k] for p in placement.values()) for k in ("CPU", "GPU")}
    return {"need": need, "cluster_max": have, "fits": all(need[k] <= have[k] for k in need)}


ASSUMPTION_HELP = {
    "gpus": "GPUs to split among scorers, verifiers and trainers; 0: the profile's total ",
    "switch_s": "seconds per switch between constructing and training when time-sharing ",
    "pool_chunks": "retrieval pool size in chunks; 0: the built index's ",
}


def plan_arguments(p) -> None:
    p.add_argument(
        "--model-config",
        default="",
        metavar="FILE",
        help="the model's HF config.json when model.path is not on this machine "
        "(configs/shapes/qwen2.5-3b.json for the paper's model)",
    )
    p.add_argument(
        "--cluster",
        default="ray_cluster.yaml",
        metavar="FILE",
        help="cluster launcher config to check the placement against (default: %(default)s)",
    )
    defaults = Assumptions()
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        what = ASSUMPTION_HELP.get(name, "")
        p.add_argument(flag, type=type(value), default=value, help=f"{what}(default: {value})")


def assumptions_of(args) -> Assumptions:
    return Assumptions(**{k: getattr(args, k) for k in asdict(Assumptions())})


def cmd_plan(cfg: Config, args) -> None:
    """`policylong plan`: print the placement, the work and the cost per stage; one JSON line."""
    a = assumptions_of(args)
    result = plan(cfg, a, args.model_config or None)
    if cfg.cluster.address and args.cluster and Path(args.cluster).is_file():
        result["cluster_fit"] = cluster_fit(result["placement"], Path(args.cluster))
    elif not cfg.cluster.address:  # a local Ray: this machine
        need = sum(p["CPU"] for p in result["placement"].values())
        cpus = os.cpu_count() or 1
        result["cluster_fit"] = {
            "need": {"CPU": need},
            "cluster_max": {"CPU": cpus},
            "fits": need <= cpus,
        }
    m = result["model"]
    print(f"model: {m['params'] / 1e9:.2f} B parameters, {m['layers']} layers, d {m['width']}")
    print("placement (total per role):")
    for role, need in result["placement"].items():
        print(f"  {role:9s} {need['CPU']:8g} CPU {need['GPU']:6g} GPU")
    if "cluster_fit" in result:
        fit = result["cluster_fit"]
        where = "cluster at max size" if cfg.cluster.address else "this machine"
        print(f"  {where}: {fit['cluster_max']} -> fits: {fit['fits']}")
    print("stage  seq_len  docs_screened  candidates  tokens_trained  scorer_h  verifier_h  "
          "trainer_h  wall_h")  # fmt: skip
    for s in result["stages"]:
        print(
            f"{s['stage']:5d} {s['seq_len']:8d} {s['documents_screened']:14d} "
            f"{s['candidates_verified']:11d} {s['tokens_trained']:15.3g} {s['scorer_gpu_h']:9.2f} "
            f"{s['verifier_gpu_h']:11.2f} {s['trainer_gpu_h']:10.2f} {s['wall_h']:7.2f}"
        )
    for s in result["stages"]:
        if s["expected_samples"] < s["budget_samples"]:
            print(
                f"warning: stage {s['stage']}: {s['documents_screened']} seed documents x "
                f"{a.samples_per_doc} samples each = {s['expected_samples']} < the budget of "
                f"{s['budget_samples']} samples: raise stages.seed_docs_per_stage"
            )
    print(
        f"total {result['total_gpu_h']:.1f} GPU-hours; weight sync {result['sync_s']:.1f} s; "
        f"index {result['index_bytes_per_vector']} B/vector, {index_size(result)}; "
        f"bottleneck: {result['bottleneck']}"
    )
    print("\n".join(describe(result["split"])))
    print(json.dumps(result))


def index_size(result: dict) -> str:
    """Never a made-up 0: the size only when the pool is known."""
    if result["index_gb_per_shard"] is None:
        return "pool size unknown (no index built; pass --pool-chunks N for its size per shard)"
    pool = result["index_pool_chunks"]
    return f"{pool:,} chunks, {result['index_gb_per_shard']:.2f} GB per shard"
