"""The commands that run one step of the method alone, below the CLI: `build-index` (the
corpus's sharded FAISS index, into the shared cache) and `screen` (pi_0's screening of every
training document)."""

from __future__ import annotations

from pathlib import Path

from pipelines.core.config import Config


def build_index_alone(cfg: Config) -> dict:
    """Chunk, embed and index the corpus into the shared cache: what was built (or reused)."""
    from cluster.runtime import init_ray
    from pipelines.world.build_index import build_index, cached_index_dir
    from pipelines.world.world import ensure_world

    init_ray(cfg.cluster)
    world = ensure_world(cfg)
    tokenizer_dir = Path(cfg.tokenizer.path or world.model_dir)
    result = build_index(
        cached_index_dir(cfg.index, cfg.run.cache_dir, world.corpus_dir, tokenizer_dir),
        world.corpus_dir,
        tokenizer_dir,
        cfg.index,
        seed=cfg.run.seed,
        embedder_cpus=cfg.resources.embedder.cpus,
    )
    m = result.manifest
    return {
        "index_dir": str(result.index_dir),
        "reused": result.reused,
        "n_chunks": m["n_chunks"],
        "shards": [{k: s[k] for k in ("n_vectors", "index_type")} for s in m["shards"]],
    }


def screen_alone(cfg: Config) -> str:
    """Screen the training documents with pi_0 -> run_dir/screen/policy_v0.parquet; a summary."""
    from cluster.runtime import init_ray
    from pipelines.driver.workers import create_scorers
    from pipelines.steps.screen import screen_documents
    from pipelines.world.ingest import read_docs
    from pipelines.world.tokenizer import load_tokenizer
    from pipelines.world.world import ensure_world

    init_ray(cfg.cluster)
    world = ensure_world(cfg)
    docs = read_docs(world.corpus_dir, "train").select(["doc_id", "text"])
    tokenizer = load_tokenizer(cfg.tokenizer.path or world.model_dir)
    out = cfg.run_dir / "screen" / "policy_v0.parquet"
    scorers = create_scorers(cfg, world.model_dir)
    try:
        table = screen_documents(cfg.screen, tokenizer, docs, scorers, out)
    finally:
        scorers.shutdown()
    n_pos = sum(len(p) for p in table["positions"].to_pylist())
    return f"screened {table.num_rows} documents, {n_pos} positions -> {out}"
