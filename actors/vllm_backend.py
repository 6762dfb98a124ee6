"""Scoring backend on vLLM's pooling runner: per-token final hidden states, lm_head applied by us.

`runner="pooling", convert="embed"` with `token_embed` and no activation returns the T x d final
(post-norm) hidden states of every prompt token. The lm_head is *not* part of the pooling model, so
the backend reads it from the checkpoint's safetensors itself (`lm_head.weight`, or
`model.embed_tokens.weight` when the embeddings are tied) and the chunked entropy math applies it.

Weight sync, two ways in without a restart: from a checkpoint dir, `collective_rpc(
"reload_weights", kwargs={"weights_path": dir})` reloads the parameters in place (tensors passed
through collective_rpc arrive mangled, so a state_dict is not accepted here); as tensors, vLLM's
weight-transfer API (`begin_transfer` / `transfer_call` / `end_transfer`, driven by
cluster/transport_vllm_api.py): the engine starts with `weight_transfer_config` (a gloo engine
on CPU, vLLM's NCCL engine on GPU; the worker extension registers both). Neither re-reads
config.json: a raised RoPE base (what every stage does) is applied in the worker by
actors/vllm_worker_extension.py (the rotary cos/sin cache recomputed in place); any other
architecture change restarts the engine (~20 s on CPU).

vLLM starts its engine-core process with spawn: build this backend inside a Ray actor or under
`if __name__ == "__main__":`.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import warnings
from pathlib import Path

import torch
from safetensors import safe_open

from actors.model_architecture import architecture

log = logging.getLogger(__name__)

WORKER_EXTENSION = "actors.vllm_worker_extension.PolicyWorkerExtension"


def rope_only_change(old: dict, new: dict) -> float | None:
    """The new RoPE base when that is all that changed between two arch configs (a raised
    max_position_embeddings aside: the engine's own max_model_len is fixed), else None."""

    def rest(cfg: dict) -> dict:
        rope = dict(cfg.get("rope_parameters") or {})
        theta = rope.pop("rope_theta", cfg.get("rope_theta"))
        skip = {"rope_parameters", "rope_theta", "max_position_embeddings"}
        return {"theta": theta, "rope": rope, **{k: v for k, v in cfg.items() if k not in skip}}

    a, b = rest(old), rest(new)
    plain = b["rope"].get("rope_type", "default") == "default"
    same_otherwise = {k: v for k, v in a.items() if k != "theta"} == {
        k: v for k, v in b.items() if k != "theta"
    }
    return float(b["theta"]) if plain and same_otherwise and b["theta"] is not None else None


def read_lm_head(model_dir: str | Path) -> torch.Tensor:
    """[V, d] float32 output embedding from an HF checkpoint's safetensors (tied or not)."""
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in '{model_dir}': save with save_pretrained")
    for key in ("lm_head.weight", "model.embed_tokens.weight"):  # untied first, then tied
        for f in files:
            with safe_open(str(f), framework="pt") as st:
                if key in st.keys():  # safe_open has no __contains__
                    return st.get_tensor(key).float()
    raise KeyError(f"neither lm_head.weight nor model.embed_tokens.weight in '{model_dir}'")


def arch_config(model_dir: str | Path) -> dict:
    """The part of config.json that fixes what the engine computes (besides the weights)."""
    return architecture(json.loads((Path(model_dir) / "config.json").read_text()))


def transfer_engine() -> str:
    """The weight-transfer engine of this host's vLLM workers (registered by the worker
    extension): gloo on its CPU build, vLLM's NCCL engine on GPUs."""
    from vllm.platforms import current_platform

    return "gloo" if current_platform.is_cpu() else "nccl_pooling"


def _quiet_vllm() -> None:
    """Before vLLM is imported: its CPU build warns at every engine start about what this host
    lacks (Triton, tcmalloc, iomp, CUDA graphs), a dozen lines per actor that say nothing about
    the run, and ~100 INFO lines. Errors still show; VLLM_LOGGING_LEVEL set by the user wins
    (INFO to debug an engine)."""
    level = os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm\.")
    # vLLM configures its loggers only when an engine starts, so what it logs on import (no
    # Triton CPU backend) goes to Python's last-resort handler in this process and in each
    # engine process it spawns. Here the logger is quieted; for the spawned ones, the env.
    logging.getLogger("vllm.triton_utils.importing").setLevel(level)
    if level == "ERROR":
        # inherited by the engine processes: torch's deprecation warning raised inside vLLM's
        # Triton dispatcher, and torch's C++ notice that vLLM bound memory to the NUMA node
        os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")


class VLLMBackend:
    """PolicyBackend on a vLLM pooling engine (one engine per backend, reused across stages)."""

    def __init__(
        self,
        model_dir: str | Path,
        memory_utilization: float,
        max_model_len: int,
        omp_threads_bind: str = "nobind",
        enforce_eager: bool = True,
        version: int = 0,
    ) -> None:
        # Read by the engine process at start-up: "nobind" leaves threads to the OS (and to
        # OMP_NUM_THREADS); "auto" binds every engine on a node to the same first core.
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = omp_threads_bind
        self.memory_utilization = memory_utilization
        self.max_model_len = max_model_len
        self.enforce_eager = enforce_eager
        self.model_dir = str(model_dir)
        self.restarts = 0  # engine restarts for a changed architecture (tests, logs)
        self._incoming: dict | None = None  # the architecture of a weight transfer in flight
        self.llm = self._start(self.model_dir)
        self._lm_head = read_lm_head(self.model_dir)
        self._arch = arch_config(self.model_dir)
        self.version = version

    def _start(self, model_dir: str):
        _quiet_vllm()
        from vllm import LLM
        from vllm.config import PoolerConfig

        return LLM(
            model=model_dir,
            runner="pooling",
            convert="embed",
            pooler_config=PoolerConfig(task="token_embed", use_activation=False),
            dtype="float32",  # on CPU vLLM picks float16 for a float32 checkpoint otherwise
            gpu_memory_utilization=self.memory_utilization,  # a share of RAM on CPU
            max_model_len=self.max_model_len,
            max_num_batched_tokens=self.max_model_len,  # a whole prompt fits one step
            enable_prefix_caching=False,  # every token's hidden state must be computed
            enforce_eager=self.enforce_eager,
            use_tqdm_on_load=False,  # a bar per start and per reload; the run has its own
            worker_extension_cls=WORKER_EXTENSION,  # in-place RoPE base updates
            # vLLM's weight-transfer API (idle until a sender initializes it).
            weight_transfer_config={"backend": transfer_engine()},
        )

    def hidden_states(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        too_long = [len(s) for s in sequences if len(s) > self.max_model_len]
        if too_long:
            raise ValueError(
                f"sequence of {too_long[0]} tokens > max_model_len {self.max_model_len}"
            )
        prompts = [{"prompt_token_ids": list(map(int, s))} for s in sequences]
        outs = self.llm.encode(prompts, pooling_task="token_embed", use_tqdm=False)
        return [o.outputs.data.float().cpu() for o in outs]

    def lm_head_weight(self) -> torch.Tensor:
        return self._lm_head

    def load_weights(self, source: str | dict[str, torch.Tensor], version: int) -> None:
        if not isinstance(source, str | Path):
            raise NotImplementedError(
                "the vLLM backend loads weights from an HF model directory only (tensors sent "
                "through collective_rpc arrive mangled on CPU): save_pretrained and pass the path"
            )
        source = str(source)
        new_arch = arch_config(source)
        theta = rope_only_change(self._arch, new_arch) if new_arch != self._arch else None
        in_place = new_arch == self._arch or theta is not None
        if in_place:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": source})
            if theta is not None:
                # 0 plain rotary embeddings updated in some worker: restart to be safe.
                in_place = 0 not in self.llm.collective_rpc("set_rope_theta", args=(theta,))
        if not in_place:
            self._restart(source)
        self._lm_head = read_lm_head(source)
        self._arch = arch_config(source)
        self.model_dir = source
        self.version = version

    def _restart(self, model_dir: str) -> None:
        log.info("vLLM: architecture of '%s' differs: restarting engine", model_dir)
        self.shutdown()
        self.llm = self._start(model_dir)
        self.restarts += 1

    # vLLM's weight-transfer API, one sync = begin, the sender's calls, end.
    def begin_transfer(self, config: dict) -> bool:
        """Can this engine receive the weights of `config` (a config.json) in place: the same
        architecture, or only a new RoPE base? If not, the caller restarts it from the dir."""
        new = architecture(config)
        self._incoming = new
        return new == self._arch or rope_only_change(self._arch, new) is not None

    def transfer_call(self, method: str, payload: dict | None = None) -> None:
        """One call of the protocol on this engine (vLLM's LLM RL API): init_weight_transfer_
        engine, start_weight_update, update_weights, finish_weight_update or shutdown_weight_
        transfer_engine."""
        if method == "init_weight_transfer_engine":
            self.llm.init_weight_transfer_engine({"init_info": payload})
        elif method == "update_weights":
            self.llm.update_weights({"update_info": payload})
        else:
            getattr(self.llm, method)()

    def end_transfer(self, model_dir: str, lm_head: torch.Tensor, version: int) -> None:
        """After finish_weight_update: apply a new RoPE base, adopt the lm_head and version."""
        new, self._incoming = self._incoming, None
        if new is None:
            raise RuntimeError("end_transfer without begin_transfer")
        theta = rope_only_change(self._arch, new) if new != self._arch else None
        if theta is not None and 0 in self.llm.collective_rpc("set_rope_theta", args=(theta,)):
            self._restart(model_dir)  # no plain rotary embedding found: rebuild to be safe
        self._lm_head = lm_head
        self._arch = new
        self.model_dir = model_dir
        self.version = version

    def shutdown(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            if engine is not None and hasattr(engine, "engine_core"):
                engine.engine_core.shutdown()
            del llm
            gc.collect()
