"""Retrieval benchmark: IVF-Flat and IVF-PQ vs exact flat search on one shard, side by side.

Builds both indexes with the code the pipeline uses (pipelines.build_index.make_faiss_index) over
random unit vectors shaped like sentence embeddings (see EmbeddingLikeVectors), runs
the same batched queries through both and prints ONE JSON line: recall@k of IVF against the exact
flat result, queries per second of each, their ratio and build times. Defaults come from the
config's `index.*` keys, so the line reports what a run would get.

    .venv/bin/python bench/retrieval.py                       # defaults (configs' IndexSection)
    .venv/bin/python bench/retrieval.py --nprobe 32 --nlist 2048 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.build_index import make_faiss_index  # noqa: E402
from pipelines.config import IndexSection  # noqa: E402


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
    args = p.parse_args()

    import faiss

    all_cores = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(args.threads)
    data = EmbeddingLikeVectors(args.dim, args.latent_dim, args.clusters, args.spread, args.seed)
    base, queries = data.draw(args.n_vectors), data.draw(args.queries)

    start = time.perf_counter()
    flat, _ = make_faiss_index(base, replace(d, flat_max_vectors=args.n_vectors), args.seed)
    flat_build_s = time.perf_counter() - start
    ivf_cfg = replace(d, flat_max_vectors=0, ivf_nlist=args.nlist)
    faiss.omp_set_num_threads(all_cores)  # the build uses every core
    start = time.perf_counter()
    ivf, info = make_faiss_index(base, ivf_cfg, args.seed)
    build_s = time.perf_counter() - start
    faiss.omp_set_num_threads(args.threads)
    ivf.nprobe = args.nprobe

    indexes = [flat, ivf]
    if args.pq_bytes:
        faiss.omp_set_num_threads(all_cores)
        start = time.perf_counter()
        pq, _ = make_faiss_index(base, replace(ivf_cfg, pq_bytes=args.pq_bytes), args.seed)
        pq_build_s = time.perf_counter() - start
        faiss.omp_set_num_threads(args.threads)
        pq.nprobe = args.nprobe
        indexes.append(pq)
    qps, found = timed_search(indexes, queries, args.k, args.batch, args.repeats)
    (qps_flat, qps_ivf), (exact, approx) = qps[:2], found[:2]
    top10_cos = float(flat.search(queries[:200], 10)[0][:, -1].mean())
    result = {
        "n_vectors": args.n_vectors,
        "dim": args.dim,
        "latent_dim": args.latent_dim,
        "clusters": args.clusters,
        "spread": args.spread,
        "queries": args.queries,
        "mean_cos_10th_neighbour": round(top10_cos, 3),
        "k": args.k,
        "nlist": info["nlist"],
        "nprobe": args.nprobe,
        "threads": args.threads,
        f"recall_at_{args.k}_ivf_vs_flat": round(recall_at_k(approx, exact), 4),
        "qps_flat": round(qps_flat, 1),
        "qps_ivf": round(qps_ivf, 1),
        "qps_ratio": round(qps_ivf / qps_flat, 2),
        "build_s": round(build_s, 2),
        "flat_build_s": round(flat_build_s, 3),
        "bytes_per_vector_flat": _bytes_per_vector(flat, args.n_vectors),
        "bytes_per_vector_ivf": _bytes_per_vector(ivf, args.n_vectors),
    }
    if args.pq_bytes:
        result |= {
            "pq_bytes": args.pq_bytes,
            f"recall_at_{args.k}_ivf_pq_vs_flat": round(recall_at_k(found[2], exact), 4),
            "qps_ivf_pq": round(qps[2], 1),
            "qps_ratio_ivf_pq": round(qps[2] / qps_flat, 2),
            "bytes_per_vector_ivf_pq": _bytes_per_vector(indexes[2], args.n_vectors),
            "pq_build_s": round(pq_build_s, 2),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
