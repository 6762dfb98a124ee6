"""Weights through the shared filesystem: each actor reloads the HF checkpoint directory.

HF backends memory-map the safetensors (zero-copy on CPU: every actor on a node shares the page
cache); vLLM backends call `reload_weights` (tensors cannot be passed to a running CPU engine).
The directory must be on storage every node sees.
"""

from __future__ import annotations

from pathlib import Path

import ray


class CheckpointDirTransport:
    name = "checkpoint_dir"

    def send(self, model_dir: Path, version: int, actors: list) -> None:
        ray.get([a.load_weights.remote(str(Path(model_dir).resolve()), version) for a in actors])

    def close(self) -> None:
        pass  # nothing held between syncs
