"""Retrieval benchmark: IVF-Flat, IVF-PQ, OPQ+IVF-PQ and both PQ indexes with exact re-ranking
against exact flat search on one shard, side by side.

Builds the indexes with the code the pipeline uses (pipelines.world.build_index.make_faiss_index;
the
re-rank is actors.retrieval_shard.Reranked, what a shard runs with index.rerank_factor) over
random unit vectors shaped like sentence embeddings (see EmbeddingLikeVectors) or over real
embeddings (--index-dir: the vectors of a built index's flat shards, queries held out of them),
runs the same batched queries through all and prints ONE JSON line: recall@k against the exact
flat result, queries per second, bytes per vector in memory (the serialized index's share per
vector) and on disk (the re-rank's float file), and build seconds. Defaults come from the
config's `index.*` keys, so the line reports what a run would get.

    .venv/bin/python bench/retrieval.py                       # defaults (configs' IndexSection)
    .venv/bin/python bench/retrieval.py --nprobe 32 --nlist 2048 --threads 2
    .venv/bin/python bench/retrieval.py --index-dir runs/cache/index-...   # real embeddings
    .venv/bin/python bench/retrieval.py --smoke     # tiny sizes (SMOKE): checks that it runs

The re-rank reads its float32 rows from an .npy file through np.memmap; the benchmark writes
that file first, so its rows are in the page cache (a warm disk, as for a shard that has been
serving a while). A cold disk adds k' random reads of 4 x dim bytes per query.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.retrieval_shard import Reranked, set_nprobe  # noqa: E402
from pipelines.core.config import IndexSection  # noqa: E402
from pipelines.world.build_index import make_faiss_index  # noqa: E402

# --smoke (what the test suite runs, so that a refactor cannot break the bench unseen): every
# variant on 2,000 small vectors in seconds; explicit options still win. It measures nothing.
SMOKE = dict(
    n_vectors=2000, dim=32, latent_dim=8, clusters=20, queries=50, batch=50, nlist=16, nprobe=4,
    repeats=1, pq_bytes=8, rerank_factor=2,
)  # fmt: skip


class EmbeddingLikeVectors:
    """Unit vectors on a low-dimensional manifold inside `dim`, like sentence embeddings.

    Points are a Gaussian mixture in a `latent_dim` space (overlapping clusters: `spread` is the
    noise scale relative to the spread of the centres), embedded by a random orthonormal map
    into `dim` with a little isotropic noise, then normalized. Real embeddings have a low
    intrinsic dimension and blurred cluster borders; isotropic noise in all 384 dimensions or
    well separated clusters make IVF look perfect (measured: recall 1.0 at nprobe 8).
    """

    def __init__(self, dim: int, latent_dim: int, clusters: int, spread: float, seed: int):
        self.rng = np.random.default_rng(seed)
        self.centres = self.rng.standard_normal((clusters, latent_dim))
        self.embed = np.linalg.qr(self.rng.standard_normal((dim, latent_dim)))[0]
        self.spread = spread

    def draw(self, n: int, ambient_noise: float = 0.02) -> np.ndarray:
        rng = self.rng
        z = self.centres[rng.integers(0, len(self.centres), n)]
        z = z + rng.standard_normal(z.shape) * self.spread
        x = z @ self.embed.T + rng.standard_normal((n, self.embed.shape[0])) * ambient_noise
        return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def timed_search(indexes: list, queries: np.ndarray, k: int, batch: int, repeats: int):
    """Per index: best-of-`repeats` queries/s over all queries in batches, and the ids found.

    The indexes take turns within every repeat, so load from other processes on a shared
    machine hits them alike and the ratio stays fair.
    """
    best = [float("inf")] * len(indexes)
    ids: list = [None] * len(indexes)
    for _ in range(repeats):
        for j, index in enumerate(indexes):
            start = time.perf_counter()
            parts = [
                index.search(queries[i : i + batch], k)[1] for i in range(0, len(queries), batch)
            ]
            best[j] = min(best[j], time.perf_counter() - start)
            ids[j] = np.concatenate(parts)
    return [len(queries) / t for t in best], ids


def real_vectors(source: Path, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(base, queries): every stored vector of a built index (flat shards, or the float files of
    re-ranked PQ shards) or of an .npy file of unit vectors, `n_queries` of them drawn out as
    queries (not in the base)."""
    import faiss

    from pipelines.core.index_format import read_manifest

    parts = []
    shards = [] if source.suffix == ".npy" else read_manifest(source)["shards"]
    for s in shards:
        if s.get("vectors_file"):
            parts.append(np.load(source / s["vectors_file"]))
        elif s["index_type"] == "flat":
            index = faiss.read_index(str(source / s["index_file"]))
            parts.append(index.reconstruct_n(0, index.ntotal))
        else:
            raise SystemExit(f"shard {s['shard']} of {source} keeps no float vectors")
    vectors = np.load(source).astype(np.float32) if not shards else np.concatenate(parts)
    picked = np.random.default_rng(seed).permutation(len(vectors))
    q, b = picked[:n_queries], np.sort(picked[n_queries:])
    return np.ascontiguousarray(vectors[b]), np.ascontiguousarray(vectors[q])


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(len(set(a[a >= 0]) & set(e)) for a, e in zip(approx, exact, strict=True))
    return hits / exact.size


def _bytes_per_vector(index, n: int) -> float:
    """What each stored vector costs: the serialized index minus its trained, empty copy."""
    import faiss

    empty = faiss.clone_index(index)
    empty.reset()
    full, fixed = len(faiss.serialize_index(index)), len(faiss.serialize_index(empty))
    return round((full - fixed) / n, 1)


def main() -> None:
    d = IndexSection()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n-vectors", type=int, default=100_000, help="database size (>= 100K)")
    p.add_argument("--dim", type=int, default=384, help="all-MiniLM-L6-v2's dimension")
    p.add_argument("--latent-dim", type=int, default=32, help="intrinsic dimension")
    p.add_argument("--clusters", type=int, default=1000, help="mixture components")
    p.add_argument("--spread", type=float, default=1.0, help="cluster noise / centre spread")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--batch", type=int, default=256, help="queries per search call")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nlist", type=int, default=d.ivf_nlist, help="default: index.ivf_nlist")
    p.add_argument("--nprobe", type=int, default=d.nprobe, help="default: index.nprobe")
    p.add_argument("--threads", type=int, default=1, help="FAISS threads (a shard actor uses 1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--pq-bytes",
        type=int,
        default=48,
        help="also build IVF-PQ with this many code bytes per vector (0: skip; index.pq_bytes)",
    )
    p.add_argument("--opq", type=int, default=1, help="also OPQ + IVF-PQ (index.opq); 0: skip")
    p.add_argument(
        "--rerank-factor",
        type=int,
        default=10,
        help="also re-rank rerank_factor x k PQ hits exactly (index.rerank_factor; 0: skip)",
    )
    p.add_argument(
        "--index-dir",
        type=Path,
        help="real embeddings, not synthetic: a built index's vectors (or an .npy of them)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes (SMOKE): checks that it runs")
    if "--smoke" in sys.argv[1:]:
        p.set_defaults(**SMOKE)
    args = p.parse_args()

    import faiss

    all_cores = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(args.threads)
    if args.index_dir:
        base, queries = real_vectors(args.index_dir, args.queries, args.seed)
        n, dim = base.shape
    else:
        shape = (args.dim, args.latent_dim, args.clusters, args.spread, args.seed)
        data = EmbeddingLikeVectors(*shape)
        base, queries = data.draw(args.n_vectors), data.draw(args.queries)
        n, dim = args.n_vectors, args.dim

    def build(cfg):
        faiss.omp_set_num_threads(all_cores)  # the build uses every core
        start = time.perf_counter()
        index, info = make_faiss_index(base, cfg, args.seed)
        seconds = time.perf_counter() - start
        faiss.omp_set_num_threads(args.threads)
        set_nprobe(index, args.nprobe)
        return index, info, seconds

    start = time.perf_counter()
    flat, _ = make_faiss_index(base, replace(d, flat_max_vectors=n), args.seed)
    flat_build_s = time.perf_counter() - start
    ivf_cfg = replace(d, flat_max_vectors=0, ivf_nlist=args.nlist)
    ivf, info, build_s = build(ivf_cfg)

    named = {"flat": flat, "ivf": ivf}  # name -> searchable (has .search(q, k) -> (D, I))
    build_seconds, memory = {}, {}
    tmp = tempfile.TemporaryDirectory(prefix="bench-retrieval-")
    if args.pq_bytes:
        pq_cfg = replace(ivf_cfg, pq_bytes=args.pq_bytes)
        variants = [("ivf_pq", pq_cfg)]
        if args.opq:
            variants.append(("opq_pq", replace(pq_cfg, opq=True)))
        if args.rerank_factor:  # the float file a re-ranking shard maps (build_index writes it)
            np.save(Path(tmp.name) / "vectors.npy", base)
            on_disk = np.load(Path(tmp.name) / "vectors.npy", mmap_mode="r")
        for name, cfg in variants:
            named[name], _, build_seconds[name] = build(cfg)
            memory[name] = _bytes_per_vector(named[name], n)
            if args.rerank_factor:
                named[f"{name}_rerank"] = Reranked(named[name], on_disk, args.rerank_factor)
                build_seconds[f"{name}_rerank"] = build_seconds[name]
                memory[f"{name}_rerank"] = memory[name]
    names = list(named)
    qps, found = timed_search(list(named.values()), queries, args.k, args.batch, args.repeats)
    qps, found = dict(zip(names, qps, strict=True)), dict(zip(names, found, strict=True))
    exact = found["flat"]
    top10_cos = float(flat.search(queries[:200], 10)[0][:, -1].mean())
    result = {
        "vectors": f"real: {args.index_dir}" if args.index_dir else "synthetic",
        "n_vectors": n,
        "dim": dim,
        "latent_dim": args.latent_dim,
        "clusters": args.clusters,
        "spread": args.spread,
        "queries": args.queries,
        "mean_cos_10th_neighbour": round(top10_cos, 3),
        "k": args.k,
        "nlist": info["nlist"],
        "nprobe": args.nprobe,
        "threads": args.threads,
        f"recall_at_{args.k}_ivf_vs_flat": round(recall_at_k(found["ivf"], exact), 4),
        "qps_flat": round(qps["flat"], 1),
        "qps_ivf": round(qps["ivf"], 1),
        "qps_ratio": round(qps["ivf"] / qps["flat"], 2),
        "build_s": round(build_s, 2),
        "flat_build_s": round(flat_build_s, 3),
        "bytes_per_vector_flat": _bytes_per_vector(flat, n),
        "bytes_per_vector_ivf": _bytes_per_vector(ivf, n),
    }
    if args.pq_bytes:
        result |= {"pq_bytes": args.pq_bytes, "rerank_factor": args.rerank_factor}
    for name in names[2:]:
        result |= {
            f"recall_at_{args.k}_{name}_vs_flat": round(recall_at_k(found[name], exact), 4),
            f"qps_{name}": round(qps[name], 1),
            f"qps_ratio_{name}": round(qps[name] / qps["flat"], 2),
            f"bytes_per_vector_{name}": memory[name],
            f"{name}_build_s": round(build_seconds[name], 2),
        }
        if name.endswith("_rerank"):
            result[f"disk_bytes_per_vector_{name}"] = 4 * dim
    tmp.cleanup()
    print(json.dumps(result | ({"smoke": True} if args.smoke else {})))


if __name__ == "__main__":
    main()
