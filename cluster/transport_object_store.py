"""Weights through Ray's object store: put once, every actor reads the same object.

Tensors travel as NumPy arrays: Ray maps those zero-copy from shared memory into every actor on
the node, so the only copy is the one `ray.put`: a CPU actor adopts the shared arrays as its
parameters (actors/hf_backend.py), a GPU actor copies them to its device. (bfloat16 has no NumPy
dtype: it travels as int16 bits and is viewed back.)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import ray
import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from pipelines.core.records import WeightPayload


def to_wire(state: dict[str, torch.Tensor]) -> dict[str, tuple[np.ndarray, str]]:
    out = {}
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        bits = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
        out[name] = (bits.numpy(), str(t.dtype).removeprefix("torch."))
    return out


def from_wire(wire: dict[str, tuple[np.ndarray, str]]) -> dict[str, torch.Tensor]:
    """Tensors viewing the (read-only, shared) arrays: no copy."""
    out = {}
    with warnings.catch_warnings():  # read-only on purpose: the policy is never written here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for name, (array, dtype) in wire.items():
            t = torch.from_numpy(array)
            out[name] = t.view(torch.bfloat16) if dtype == "bfloat16" else t
    return out


def load_policy_payload(model_dir: Path) -> WeightPayload:
    """An HF checkpoint in memory. The config travels too: a stage changes the RoPE base and
    the context length, not only the weights."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    state = {k: v for f in files for k, v in load_file(str(f)).items()}
    return WeightPayload(AutoConfig.from_pretrained(str(model_dir)).to_dict(), state)


class ObjectStoreTransport:
    name = "object_store"

    def send(self, model_dir: Path, version: int, actors: list) -> None:
        self.send_payload(load_policy_payload(model_dir), version, actors)

    def send_payload(self, payload: WeightPayload, version: int, actors: list) -> None:
        """A policy already in memory (e.g. straight from the trainer)."""
        wire = WeightPayload(payload.config, to_wire(payload.state), wire="numpy")
        ref = ray.put(wire)  # the one copy, shared by all readers on the node
        ray.get([a.load_weights.remote(ref, version) for a in actors])

    def close(self) -> None:
        pass  # nothing held between syncs
