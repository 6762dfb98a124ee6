"""The policy-backend interface (scorers, verifiers, weight sync use it) and its factory."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

import torch

from pipelines.core.config import ScreenSection


class PolicyBackend(Protocol):
    version: int  # policy version currently loaded (0 = base)

    def hidden_states(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        """Per sequence: [T, d] float32 final (post-norm) hidden states, the input of lm_head."""
        ...

    def lm_head_weight(self) -> torch.Tensor:
        """[V, d] float32 output embedding (tied embeddings: the embedding matrix)."""
        ...

    def load_weights(self, source: str | dict[str, torch.Tensor], version: int) -> None:
        """str = HF model dir; dict = a state_dict (HF backend only; vLLM raises)."""
        ...


def make_backend(
    kind: Literal["hf", "vllm"],
    model_dir: str | Path,
    screen_cfg: ScreenSection,
    *,
    max_model_len: int | None = None,
    omp_threads_bind: str | None = None,
    device: str = "cpu",
    version: int = 0,
) -> PolicyBackend:
    """Build a backend. vLLM: max_model_len defaults to screen.vllm_max_model_len (0 = the
    screen's max_doc_tokens); verifiers pass their own (candidate chunks + document)."""
    if kind == "hf":
        from actors.hf_backend import HFBackend

        return HFBackend(model_dir, device=device, version=version)
    if kind == "vllm":
        from actors.vllm_backend import VLLMBackend

        return VLLMBackend(
            model_dir,
            memory_utilization=screen_cfg.vllm_memory_utilization,
            max_model_len=max_model_len
            or screen_cfg.vllm_max_model_len
            or screen_cfg.max_doc_tokens,
            omp_threads_bind=omp_threads_bind or "nobind",
            enforce_eager=screen_cfg.vllm_enforce_eager,
            version=version,
        )
    raise ValueError(f"unknown backend '{kind}': use 'hf' or 'vllm'")


def omp_bind_for(screen_cfg: ScreenSection, actor_index: int) -> str:
    """The VLLM_CPU_OMP_THREADS_BIND value of the actor_index-th engine on a node."""
    cpus = screen_cfg.vllm_omp_cpus
    return cpus[actor_index % len(cpus)] if cpus else "nobind"
