"""Weights through the shared filesystem: each actor reloads the HF checkpoint directory.

The vLLM path on CPU (`reload_weights`; tensors cannot be passed to a running CPU engine) and the
fallback for any backend. The directory must be on storage every node sees.
"""

from __future__ import annotations

from pathlib import Path

import ray


class CheckpointDirTransport:
    name = "checkpoint_dir"

    def send(self, model_dir: Path, version: int, actors: list) -> None:
        ray.get([a.load_weights.remote(str(Path(model_dir).resolve()), version) for a in actors])
