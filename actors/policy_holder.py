"""PolicyHolder: what every actor that runs the current policy shares (scorers and verifiers).

It starts one backend (HF or vLLM) with the actor's thread budget, keeps the policy version,
loads new weights between stages, answers the broadcast's probe and counts busy time for the
overlap benchmark. Subclasses add their step of the method (screen, verify).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from actors.backends import make_backend, omp_bind_for
from pipelines.core.config import ScreenSection
from pipelines.core.entropy import entropies_at, token_entropies
from pipelines.core.records import WeightPayload, sync_probe_file


@dataclass(frozen=True)
class PolicySpec:
    """What a policy actor needs to start its engine (not the whole config)."""

    backend: str  # "hf" | "vllm"
    screen: ScreenSection  # vLLM engine settings and the entropy kernel's tiling
    threads: int  # torch / OpenMP threads of the actor and its engine
    gpus: float
    engine_index: int  # its place among the node's vLLM engines (core binding)
    max_model_len: int | None = None  # vLLM: longest sequence; None = screen.max_doc_tokens
    # A JSON file {model_dir, version} naming the policy the run's actors hold now (the fleet
    # rewrites it before each broadcast): an actor Ray restarts after a crash loads that one,
    # not the one it was first created with. Empty: use the constructor's.
    pointer: str = ""
    probe_tolerance: float = 1e-3  # a restarted actor's probe entropies vs the trainer's


def current_policy(pointer: str, model_dir: str | Path, version: int) -> tuple[str, int]:
    """The policy an actor starting now must hold: the pointer's, else the given one."""
    if pointer and Path(pointer).is_file():
        current = json.loads(Path(pointer).read_text())
        return current["model_dir"], int(current["version"])
    return str(model_dir), version


class PolicyHolder:
    def __init__(self, spec: PolicySpec, model_dir: str | Path, version: int = 0):
        model_dir, version = current_policy(spec.pointer, model_dir, version)
        # Before any engine starts: vLLM's in-process worker replaces torch.set_num_threads, and
        # an unbound ("nobind") engine process takes its thread count from OMP_NUM_THREADS.
        torch.set_num_threads(spec.threads)
        os.environ["OMP_NUM_THREADS"] = str(spec.threads)
        self.spec = spec
        self.model_dir = str(model_dir)
        self.busy_s = 0.0
        self.backend = make_backend(
            spec.backend,
            model_dir,
            spec.screen,
            max_model_len=spec.max_model_len,
            omp_threads_bind=omp_bind_for(spec.screen, spec.engine_index),
            device="cuda" if spec.gpus > 0 else "cpu",
            version=version,
        )
        self.prove_policy()  # before Ray hands this actor any work

    def prove_policy(self) -> float:
        """A trained policy's checkpoint carries the trainer's entropies of a fixed probe
        (sync_probe.json): this actor's must match, or it holds the wrong weights and must not
        work. The largest difference (0 for the base, which has no probe)."""
        probe = sync_probe_file(Path(self.model_dir))
        if not probe.is_file():
            return 0.0
        expected = json.loads(probe.read_text())
        got = self.probe_entropy(expected["probe_ids"])
        diff = max(abs(a - b) for a, b in zip(got, expected["entropies"], strict=True))
        if diff > self.spec.probe_tolerance:
            raise RuntimeError(
                f"policy {self.model_dir} (version {self.backend.version}) loaded but its probe "
                f"entropies differ from the trainer's by {diff:.2e} > {self.spec.probe_tolerance}"
            )
        return diff

    def pid(self) -> int:
        """The actor's process (a restart after a crash gives a new one)."""
        return os.getpid()

    @property
    def _tiling(self) -> tuple[int, int]:
        return self.spec.screen.lm_head_chunk_tokens, self.spec.screen.lm_head_vocab_tile

    def entropies(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        """Exact H(x_t | x_<t) of every token of every sequence (out[0] = NaN)."""
        weight = self.backend.lm_head_weight()
        hidden = self.backend.hidden_states(sequences)
        return [token_entropies(h, weight, *self._tiling) for h in hidden]

    def entropies_at(
        self, sequences: list[list[int]], positions: list[Sequence[int]]
    ) -> list[torch.Tensor]:
        """H(x_t | x_<t) only at the asked positions of each sequence."""
        weight = self.backend.lm_head_weight()
        hidden = self.backend.hidden_states(sequences)
        return [
            entropies_at(h, weight, pos, *self._tiling)
            for h, pos in zip(hidden, positions, strict=True)
        ]

    def warmup(self) -> float:
        """Compile the entropy update and touch the backend once, before any stage starts:
        actors live across stages, so their start-up is not a stage's work. Returns seconds."""
        start = time.perf_counter()
        self.entropies([list(range(8))])
        return time.perf_counter() - start

    def timed(self, fn, *args):
        """Run fn and add its wall time to this actor's busy time."""
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.busy_s += time.perf_counter() - start

    def busy_seconds(self) -> float:
        """Total time spent on the method's work: the overlap benchmark's per-actor busy time."""
        return self.busy_s

    def load_weights(self, source: str | WeightPayload, version: int) -> int:
        self.backend.load_weights(source, version)
        if isinstance(source, str | Path):
            self.model_dir = str(source)
        return self.backend.version

    def receive_weights(self, group: dict, buckets: list, config: dict, version: int) -> int:
        """The receiving end of cluster/transport_collective.py: one call per sync."""
        from cluster.transport_collective import receive_state

        # Only HF backends receive tensors (config refuses a tensor transport with vLLM).
        state = receive_state(group, buckets, self.backend.device)
        self.backend.load_weights(WeightPayload(config, state), version)
        return self.backend.version

    # vLLM's weight-transfer API (cluster/transport_vllm_api.py): its sender drives these.
    def begin_weight_transfer(self, config: dict) -> bool:
        """Whether this actor's engine receives `config`'s weights in place."""
        return self.backend.begin_transfer(config)

    def weight_transfer_call(self, method: str, payload: dict | None = None) -> None:
        self.backend.transfer_call(method, payload)

    def end_weight_transfer(self, model_dir: str, lm_head, version: int) -> int:
        """lm_head: the sender's float32 array (read-only, shared): copied, the sender may go."""
        self.backend.end_transfer(model_dir, torch.tensor(lm_head), version)
        self.model_dir = model_dir
        return self.backend.version

    def engine_restarts(self) -> int:
        """How often a vLLM engine was restarted for a changed architecture (0 for HF)."""
        return getattr(self.backend, "restarts", 0)

    def policy_version(self) -> int:
        return self.backend.version

    def probe_entropy(self, input_ids: list[int]) -> list[float]:
        """Per-token entropies H(x_t | x_<t) of a fixed probe for t = 1..T-1 (no NaN entry)."""
        return self.entropies([list(input_ids)])[0][1:].tolist()
