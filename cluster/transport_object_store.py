"""Weights through Ray's object store: put once, every actor reads the same object."""

from __future__ import annotations

from pathlib import Path

import ray
from safetensors.torch import load_file
from transformers import AutoConfig


def load_policy_payload(model_dir: Path) -> dict:
    """{config, state_dict} of an HF checkpoint. The config travels too: a stage changes the
    RoPE base and the context length, not only the weights."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    state = {k: v for f in files for k, v in load_file(str(f)).items()}
    return {"config": AutoConfig.from_pretrained(str(model_dir)).to_dict(), "state_dict": state}


class ObjectStoreTransport:
    name = "object_store"

    def send(self, model_dir: Path, version: int, actors: list) -> None:
        ref = ray.put(load_policy_payload(model_dir))  # one copy, shared by all readers
        ray.get([a.load_weights.remote(ref, version) for a in actors])
