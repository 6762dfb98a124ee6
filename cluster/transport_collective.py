"""Weights over a collective: one sender broadcasts pi_{k+1} to every actor in flat buckets.

The GPU-cluster path (NCCL between GPUs; gloo between CPU processes, which is how it is tested on
machines without a GPU). Per sync:

    sender  = a WeightSender actor: reads the checkpoint once, plans buckets, is rank 0
    group   = a fresh process group of 1 sender + N receivers on its own TCP store (a
              "stateless" group as in vLLM/OpenRLHF: no actor ever joins torch's global group,
              so the actors' own use of torch.distributed is untouched)
    buckets = tensors packed per dtype into flat buffers of stages.weight_bucket_mb; one
              broadcast per bucket, one actor call per receiver per sync
    receive = each receiver unpacks views of its buckets (no further copy) and loads them with
              the config, which may have changed (a stage raises the RoPE base)

Only HF backends receive this way; a running vLLM engine needs its own weight-transfer hook
(vLLM's worker extension), which is not built yet (needs a GPU session to test).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import ray
import torch
import torch.distributed as dist

TIMEOUT = timedelta(minutes=10)


@dataclass
class Bucket:
    dtype: str
    numel: int = 0
    entries: list[tuple[str, list[int], int]] = field(default_factory=list)  # name, shape, off


def plan_buckets(state: dict[str, torch.Tensor], bucket_bytes: int) -> list[Bucket]:
    """Tensors in name order, packed per dtype into buckets of at most bucket_bytes (a tensor
    larger than that gets a bucket of its own)."""
    open_: dict[str, Bucket] = {}
    done: list[Bucket] = []
    for name in sorted(state):
        t = state[name]
        dtype = str(t.dtype).removeprefix("torch.")
        b = open_.setdefault(dtype, Bucket(dtype))
        if b.numel and (b.numel + t.numel()) * t.element_size() > bucket_bytes:
            done.append(b)
            b = open_[dtype] = Bucket(dtype)
        b.entries.append((name, list(t.shape), b.numel))
        b.numel += t.numel()
    return done + [b for b in open_.values() if b.numel]


def pack(state: dict[str, torch.Tensor], bucket: Bucket, device: torch.device) -> torch.Tensor:
    flat = torch.empty(bucket.numel, dtype=getattr(torch, bucket.dtype), device=device)
    for name, _, offset in bucket.entries:
        n = state[name].numel()
        flat[offset : offset + n].copy_(state[name].reshape(-1))
    return flat


def unpack(flat: torch.Tensor, bucket: Bucket) -> dict[str, torch.Tensor]:
    out = {}
    for name, shape, offset in bucket.entries:
        n = int(torch.Size(shape).numel())
        out[name] = flat[offset : offset + n].view(shape)
    return out


def open_group(address: str, port: int, rank: int, world: int, key: str, device: torch.device):
    """A process group of `world` members on its own TCP store (rank 0 hosts the store)."""
    store = dist.TCPStore(address, port, world, is_master=rank == 0, timeout=TIMEOUT)
    store = dist.PrefixStore(key, store)
    if device.type == "cuda":
        return dist.ProcessGroupNCCL(store, rank, world)
    return dist.ProcessGroupGloo(store, rank, world, TIMEOUT)


def broadcast_buckets(group, flats: list[torch.Tensor]) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    for flat in flats:
        group.broadcast([flat], opts).wait()


def receive_state(group_spec: dict, buckets: list[Bucket], device: torch.device) -> dict:
    """Receiver side: join the group, receive every bucket, return views as a state dict."""
    group = open_group(**group_spec, device=device)
    flats = [torch.empty(b.numel, dtype=getattr(torch, b.dtype), device=device) for b in buckets]
    broadcast_buckets(group, flats)
    state: dict[str, torch.Tensor] = {}
    for flat, bucket in zip(flats, buckets, strict=True):
        state |= unpack(flat, bucket)
    return state


class WeightSender:
    """Rank 0 of every sync: holds the checkpoint being sent and hosts the group's store."""

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)
        self.state: dict[str, torch.Tensor] = {}

    def prepare(self, model_dir: str, bucket_bytes: int) -> dict:
        """Load the checkpoint, plan buckets, pick the store's address: what receivers need."""
        from cluster.transport_object_store import load_policy_payload

        payload = load_policy_payload(Path(model_dir))
        self.state = payload.state
        with socket.socket() as s:  # a free port on this node for the group's TCP store
            s.bind(("", 0))
            port = s.getsockname()[1]
        return {
            "address": ray.util.get_node_ip_address(),
            "port": port,
            "buckets": plan_buckets(self.state, bucket_bytes),
            "config": payload.config,
        }

    def send(self, group_spec: dict, buckets: list[Bucket]) -> int:
        group = open_group(**group_spec, device=self.device)
        flats = [pack(self.state, b, self.device) for b in buckets]
        broadcast_buckets(group, flats)
        self.state = {}
        return sum(f.numel() * f.element_size() for f in flats)


class CollectiveTransport:
    name = "collective"
    sender_class = WeightSender  # tests inject a failing sender here

    def __init__(self, bucket_mb: int, device: str = "cpu"):
        self.bucket_bytes = bucket_mb * 2**20
        self.device = device
        self.sender = None
        self.syncs = 0

    def send(self, model_dir: Path, version: int, actors: list) -> None:
        try:
            self._send(model_dir, version, actors)
        except BaseException:
            self.close()  # a failed sync leaves the sender in a broken group: start afresh
            raise

    def _send(self, model_dir: Path, version: int, actors: list) -> None:
        if self.sender is None:
            # Fractional GPU: the sender only needs to sit on a GPU of the node, not own one.
            gpus = 0.05 if self.device == "cuda" else 0
            sender = ray.remote(self.sender_class).options(num_cpus=0, num_gpus=gpus)
            self.sender = sender.remote(self.device)
        plan = ray.get(self.sender.prepare.remote(str(model_dir), self.bucket_bytes))
        self.syncs += 1
        world = 1 + len(actors)
        spec = {
            "address": plan["address"],
            "port": plan["port"],
            "world": world,
            "key": f"weights-v{version}-sync{self.syncs}/",
        }
        receivers = [
            a.receive_weights.remote(
                spec | {"rank": i + 1}, plan["buckets"], plan["config"], version
            )
            for i, a in enumerate(actors)
        ]
        sent = self.sender.send.remote(spec | {"rank": 0}, plan["buckets"])
        # Wait for every call, not just the first to fail: a receiver still blocked in this
        # group would make the retry's call wait behind it. A sender that dies mid-broadcast
        # closes its sockets, so the receivers fail promptly instead of waiting out TIMEOUT.
        ray.wait([sent, *receivers], num_returns=1 + len(receivers))
        ray.get([sent, *receivers])

    def close(self) -> None:
        if self.sender is not None:
            ray.kill(self.sender)
            self.sender = None
