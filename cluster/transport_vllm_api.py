"""Weights into running vLLM engines through vLLM's own weight-transfer API.

`stages.weight_transport: collective` with vLLM backends (cluster/weight_sync.py). One method
module per wire: cluster/transport_vllm_gloo.py (CPU engines: a gloo engine registered with
vLLM's factories at run time) and cluster/transport_vllm_nccl.py (GPU engines: vLLM's built-in
NCCL engine). Per sync:

    prepare  a VLLMWeightSender actor (rank 0) loads pi_{k+1} once: tensors, config.json, and
             the output embedding, put once into Ray's object store (the pooling engine has no
             lm_head: the actor's entropy math applies it, actors/vllm_backend.py)
    begin    each actor checks the new config: same architecture, or only a new RoPE base, is
             received in place; any other change restarts that engine from the checkpoint dir
    send     vLLM's TrainerWeightTransferEngine (from WeightTransferTrainerFactory) with a
             client over the actors: init_weight_transfer_engine (a fresh group per sync, so a
             restarted actor never leaves a stale member), start_weight_update, update_weights
             concurrent with the broadcast, finish_weight_update; then both sides shut it down
    end      each actor recomputes its rotary cache for a new base (actors/vllm_worker_extension
             .py), adopts the lm_head and the version; weight_sync.broadcast then checks probes
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from importlib import import_module
from pathlib import Path

import ray
import torch
from safetensors.torch import load_file

_METHODS = {"gloo": "cluster.transport_vllm_gloo", "nccl": "cluster.transport_vllm_nccl"}


def method_module(engine: str):
    """The module of one weight-transfer method ("gloo" on CPU, "nccl" on GPU)."""
    return import_module(_METHODS[engine])


def output_embedding(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """[V, d] float32 lm_head of a checkpoint's state (tied: the input embedding)."""
    for key in ("lm_head.weight", "model.embed_tokens.weight"):
        if key in state:
            return state[key].detach().float().cpu().contiguous()
    raise KeyError("neither lm_head.weight nor model.embed_tokens.weight in the checkpoint")


def state_source(state: dict[str, torch.Tensor]):
    """A vLLM WeightSource over an in-memory state dict (the trainer's checkpoint)."""
    from vllm.distributed.weight_transfer import ParamMeta, WeightSource

    class StateDictSource(WeightSource):
        def metadata(self) -> list[ParamMeta]:
            return [ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in state.items()]

        def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
            yield from state.items()

    return StateDictSource()


class PolicyActorsClient:
    """vLLM's VLLMWeightSyncClient protocol over policy actors (actors/policy_holder.py): every
    call fans out to all of them and waits. Each actor's engine has one worker (tensor and
    pipeline parallel 1), so actor i is rank rank_offset + i of the transfer group; vLLM's own
    Ray client would hand every engine the same offset."""

    def __init__(self, actors: list) -> None:
        self.actors = actors

    def _all(self, method: str, payloads: list | None = None) -> None:
        payloads = payloads or [None] * len(self.actors)
        calls = zip(self.actors, payloads, strict=True)
        ray.get([a.weight_transfer_call.remote(method, p) for a, p in calls])

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        first = init_info["rank_offset"]
        infos = [init_info | {"rank_offset": first + i} for i in range(len(self.actors))]
        self._all("init_weight_transfer_engine", infos)

    def start_weight_update(self) -> None:
        self._all("start_weight_update")

    def update_weights(self, update_info: dict) -> None:
        self._all("update_weights", [update_info] * len(self.actors))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all("finish_weight_update")

    def shutdown_weight_transfer_engine(self) -> None:
        self._all("shutdown_weight_transfer_engine")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class VLLMWeightSender:
    """Rank 0 of every sync: holds pi_{k+1} between prepare and send."""

    def __init__(self, engine: str, device: str = "cpu") -> None:
        self.method = method_module(engine)
        self.method.register()
        self.device = torch.device(device)
        self.state: dict[str, torch.Tensor] = {}

    def prepare(self, model_dir: str) -> dict:
        """Load the checkpoint; returns its config.json and [ref of the float32 lm_head]
        (in a list, so Ray passes the reference, not the array)."""
        files = sorted(Path(model_dir).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors in '{model_dir}'")
        self.state = {k: v for f in files for k, v in load_file(str(f), str(self.device)).items()}
        config = json.loads((Path(model_dir) / "config.json").read_text())
        lm_head = ray.put(output_embedding(self.state).numpy())
        nbytes = sum(t.numel() * t.element_size() for t in self.state.values())
        return {"config": config, "lm_head": [lm_head], "bytes": nbytes}

    def send(self, actors: list, bucket_bytes: int, key: str) -> dict:
        """Push the prepared state into every actor's engine: {bytes, init_s, send_s} (the
        group's rendezvous; start, update and finish of the weight update)."""
        from vllm.distributed.weight_transfer import WeightTransferTrainerFactory

        state, self.state = self.state, {}
        if not actors:  # every engine restarts instead: nothing to send
            return {"bytes": 0, "init_s": 0.0, "send_s": 0.0}
        start = time.perf_counter()
        address, world = ray.util.get_node_ip_address(), 1 + len(actors)
        info = self.method.trainer_init_info(address, free_port(), world, key, bucket_bytes)
        client = PolicyActorsClient(actors)
        source = state_source(state)
        trainer = WeightTransferTrainerFactory.trainer_init(info, client=client, source=source)
        joined = time.perf_counter()
        trainer.send_weights()  # on failure the transport kills this actor, group and all
        sent = time.perf_counter()
        trainer.shutdown()
        client.shutdown_weight_transfer_engine()
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        return {"bytes": nbytes, "init_s": joined - start, "send_s": sent - joined}


class VLLMWeightTransferTransport:
    """cluster/weight_sync.py's WeightTransport for vLLM backends over vLLM's own API."""

    def __init__(self, bucket_mb: int, device: str = "cpu") -> None:
        self.engine = "nccl" if device == "cuda" else "gloo"
        self.name = f"vllm_{self.engine}"
        self.bucket_bytes = bucket_mb * 2**20
        self.device = device
        self.sender = None
        self.syncs = 0
        self.restarted = 0  # engines restarted for a change beyond the RoPE base (tests, logs)
        self.last: dict = {}  # the last sync's parts in seconds, and its bytes

    def _sender(self):
        if self.sender is None:
            # Fractional GPU: NCCL's rank 0 only needs to sit on a GPU of the node.
            gpus = 0.05 if self.device == "cuda" else 0
            actor = ray.remote(VLLMWeightSender).options(num_cpus=0, num_gpus=gpus)
            self.sender = actor.remote(self.engine, self.device)
        return self.sender

    def send(self, model_dir: Path, version: int, actors: list) -> None:
        try:
            self._send(str(Path(model_dir).resolve()), version, actors)
        except BaseException:
            self.close()  # a failed sync leaves the sender in a broken group: start afresh
            raise

    def _send(self, model_dir: str, version: int, actors: list) -> None:
        sender, t0 = self._sender(), time.perf_counter()
        plan = ray.get(sender.prepare.remote(model_dir))
        in_place = ray.get([a.begin_weight_transfer.remote(plan["config"]) for a in actors])
        receivers = [a for a, ok in zip(actors, in_place, strict=True) if ok]
        self.syncs += 1
        key = f"vllm-weights-v{version}-sync{self.syncs}/"
        t1 = time.perf_counter()
        wire = ray.get(sender.send.remote(receivers, self.bucket_bytes, key))
        t2 = time.perf_counter()
        lm_head = plan["lm_head"][0]
        ray.get([a.end_weight_transfer.remote(model_dir, lm_head, version) for a in receivers])
        t3 = time.perf_counter()
        # What a sync costs, by part (bench/refit.py): the sender's read, the protocol's
        # rendezvous and weight update, the actors' RoPE base and lm_head.
        self.last = {"prepare_s": t1 - t0, "init_s": wire["init_s"], "send_s": wire["send_s"]}
        self.last |= {"end_s": t3 - t2, "bytes": wire["bytes"]}
        others = [a for a, ok in zip(actors, in_place, strict=True) if not ok]
        if others:  # not receivable in place: restart those engines from the checkpoint
            self.restarted += len(others)
            ray.get([a.load_weights.remote(model_dir, version) for a in others])

    def close(self) -> None:
        if self.sender is not None:
            ray.kill(self.sender)
            self.sender = None
