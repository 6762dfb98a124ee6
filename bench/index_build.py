"""Index build benchmark: where the embedded default's index build goes, before and after.

On the profile's world (corpus + pi_0's tokenizer; built when missing) it chunks the indexed
documents (Ray Data, as a build does), then embeds every chunk three ways in this process,
interleaved slice by slice so that the machine's load hits them alike:

    before        float32 on the torch threads of resources.embedder.cpus (the build until
                  issue 28: 0.25 CPUs -> 1 thread on the embedded default)
    threads_only  float32 on every CPU free on this node (build_index.build_cpus)
    after         build_cpus and the embedding dtype "auto": bfloat16 where the CPU does it
                  natively (AMX or AVX512-BF16), else float32 (actors/embedder.py)

reporting wall and CPU seconds of each. Then it times the shard files (FAISS + Parquet) and one
whole `build_index` as a run calls it (Ray Data start-up included), and checks that the faster
vectors retrieve what the float32 ones do: the min cosine per chunk, and recall@k of exact search
with `after` vectors against exact search with `before` vectors for query windows of held-out
documents (index.top_k neighbours; queries of a screen's size, screen.query_before + 1 +
screen.query_after tokens, embedded each way). Prints ONE JSON line.

    .venv/bin/python bench/index_build.py                      # configs/tiny.yaml
    .venv/bin/python bench/index_build.py --config configs/test.yaml --set index.max_docs=400
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, round(time.perf_counter() - start, 2)


def query_windows(cfg, corpus_dir: Path, tokenizer_dir: Path, n: int, seed: int) -> list[str]:
    """Decoded windows of held-out documents, the size of a screen's retrieval query."""
    from pipelines.world.ingest import read_docs
    from pipelines.world.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    texts = read_docs(corpus_dir, "heldout")["text"].to_pylist()
    ids = [t for t in tok(texts, add_special_tokens=False)["input_ids"] if len(t) > 64]
    width = cfg.screen.query_before + 1 + cfg.screen.query_after
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        doc = ids[rng.integers(len(ids))]
        start = int(rng.integers(0, len(doc) - width))
        out.append(tok.decode(doc[start : start + width]))
    return out


def agreement(before: np.ndarray, after: np.ndarray, queries: list[str], cfg) -> dict:
    """Exact top-k with `after` vectors (queries embedded the same way) against `before`'s."""
    import faiss

    from actors.embedder import SentenceEncoder

    k = cfg.index.top_k
    found = {}
    for name, base in (("float32", before), ("auto", after)):
        q = SentenceEncoder(cfg.index.embedder, cfg.index.embed_batch_size, 2, name).embed(queries)
        index = faiss.IndexFlatIP(base.shape[1])
        index.add(base)
        found[name] = index.search(q, k)[1]
    hits = sum(len(set(a) & set(b)) for a, b in zip(found["auto"], found["float32"], strict=True))
    return {
        "min_cosine": round(float((before * after).sum(1).min()), 5),
        f"recall@{k}": round(hits / found["float32"].size, 4),
        "queries": len(queries),
    }


def embed_variants(texts: list[str], cfg, slice_size: int = 256) -> tuple[dict, dict]:
    """Every text embedded by each variant (module docstring), interleaved per slice."""
    import torch

    from actors.embedder import SentenceEncoder, embedder_threads, resolve_dtype
    from pipelines.world.build_index import build_cpus

    share = cfg.resources.embedder.cpus
    node = build_cpus(share)
    variants = {
        "before": (share, "float32"),
        "threads_only": (node, "float32"),
        "after": (node, resolve_dtype("auto")),
    }
    ix = cfg.index
    encoders = {n: SentenceEncoder(ix.embedder, ix.embed_batch_size, 1, d) for n, (_, d) in
                variants.items()}  # fmt: skip
    wall, cpu, parts = (dict.fromkeys(variants, 0.0), dict.fromkeys(variants, 0.0),
                        {n: [] for n in variants})  # fmt: skip
    for i in range(0, len(texts), slice_size):
        for name, (cpus, _) in variants.items():
            torch.set_num_threads(embedder_threads(cpus))
            w, c = time.perf_counter(), time.process_time()
            parts[name].append(encoders[name].embed(texts[i : i + slice_size]))
            wall[name] += time.perf_counter() - w
            cpu[name] += time.process_time() - c
    out = {
        name: {
            "dtype": dtype,
            "cpus": cpus,
            "threads": embedder_threads(cpus),
            "embed_s": round(wall[name], 1),
            "cpu_s": round(cpu[name], 1),
            "chunks_per_s": round(len(texts) / wall[name], 1),
        }
        for name, (cpus, dtype) in variants.items()
    }
    return out, {name: np.concatenate(p) for name, p in parts.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--queries", type=int, default=300, help="held-out query windows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--tokenizer",
        default="",
        metavar="DIR",
        help="pi_0's tokenizer files (default: the profile's world, built when missing; the "
        "embedded base's build saves its tokenizer first, in its .tmp folder)",
    )
    args = p.parse_args()

    import torch

    from cluster.runtime import init_ray
    from pipelines.core.config import load_config
    from pipelines.world.build_index import _write_index, build_index, index_docs
    from pipelines.world.chunking import chunk_corpus
    from pipelines.world.world import ensure_corpus, ensure_world

    cfg = load_config(args.config, args.overrides)
    load_start = round(os.getloadavg()[0], 2)
    init_ray(cfg.cluster)
    if args.tokenizer:
        corpus_dir, tokenizer_dir = ensure_corpus(cfg), Path(args.tokenizer)
    else:
        world = ensure_world(cfg)
        corpus_dir, tokenizer_dir = world.corpus_dir, Path(cfg.tokenizer.path or world.model_dir)
    docs = index_docs(corpus_dir, cfg.index)
    ix = cfg.index
    chunks, chunk_s = timed(chunk_corpus, docs, tokenizer_dir, ix.chunk_tokens, ix.min_chunk_tokens)
    embeds, vectors = embed_variants(chunks["text"].to_pylist(), cfg)
    with tempfile.TemporaryDirectory() as tmp:
        _, write_s = timed(_write_index, Path(tmp), chunks, vectors["after"], ix, cfg.run.seed)
        build, build_s = timed(
            build_index, Path(tmp) / "index", corpus_dir, tokenizer_dir, ix,
            cfg.run.seed, cfg.resources.embedder.cpus,
        )  # fmt: skip
    before_s = chunk_s + embeds["before"]["embed_s"] + write_s  # the same steps, old settings
    line = {
        "bench": "index_build",
        "config": args.config,
        "overrides": args.overrides,
        "n_docs": docs.num_rows,
        "n_chunks": chunks.num_rows,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "load_avg_1m": [load_start, round(os.getloadavg()[0], 2)],  # at start, at end
        "chunk_s": chunk_s,
        "write_s": write_s,
        "embed": embeds,
        "index_before_s": round(before_s, 1),
        "build_index_after_s": build_s,
        "build_index_timings": build.manifest.get("timings"),
        "speedup_embed": round(embeds["before"]["embed_s"] / embeds["after"]["embed_s"], 2),
        "agreement": agreement(
            vectors["before"],
            vectors["after"],
            query_windows(cfg, corpus_dir, tokenizer_dir, args.queries, args.seed),
            cfg,
        ),
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
