"""The NCCL weight-transfer stand-in of bench/gpu_issue30.sh (issue 30, item 3; see
bench/gpu_issue30.py's docstring): the Qwen2.5-3B bf16 state in packed buckets from one process
to another, against one device-to-device copy of the same bytes. Two GPUs: NCCL between them.
One GPU: NCCL between two processes on it is tried (NCCL refuses one device twice, "Duplicate
GPU", reported), then CUDA IPC (vLLM's ipc engine's way). GPU_SMOKE_TINY=1: gloo on CPU."""

from __future__ import annotations

import math
import time

from bench.gpu_issue30 import _device, _progress, _shape, _timed


def state_shapes(shape: dict) -> list[tuple[str, tuple[int, ...]]]:
    """A Qwen2 state dict's names and shapes (tied embeddings: no lm_head)."""
    d, inter = shape["hidden_size"], shape["intermediate_size"]
    hd = d // shape["num_attention_heads"]
    q, kv = shape["num_attention_heads"] * hd, shape["num_key_value_heads"] * hd
    out = [("model.embed_tokens.weight", (shape["vocab_size"], d))]
    for i in range(shape["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (q, d)), (p + "self_attn.q_proj.bias", (q,))]
        for n in ("k", "v"):
            out += [
                (p + f"self_attn.{n}_proj.weight", (kv, d)),
                (p + f"self_attn.{n}_proj.bias", (kv,)),
            ]  # noqa: E501
        out += [(p + "self_attn.o_proj.weight", (d, q)), (p + "mlp.down_proj.weight", (d, inter))]
        out += [(p + "mlp.gate_proj.weight", (inter, d)), (p + "mlp.up_proj.weight", (inter, d))]
        out += [(p + "input_layernorm.weight", (d,)), (p + "post_attention_layernorm.weight", (d,))]
    return out + [("model.norm.weight", (d,))]


def plan(shapes, bucket_numel: int) -> list[list[tuple[int, int, int]]]:
    """Packed buckets: per bucket [(tensor index, offset in bucket, numel)], in order."""
    buckets, cur, fill = [], [], 0
    for i, (_, s) in enumerate(shapes):
        n = math.prod(s)
        if cur and fill + n > bucket_numel:
            buckets.append(cur)
            cur, fill = [], 0
        cur.append((i, fill, n))
        fill += n
    return buckets + [cur] if cur else buckets


def _make_state(shapes, device, dtype, seed: int):
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(s, generator=g, device=device).to(dtype) for _, s in shapes]


def _flat(bucket, dtype, device):
    import torch

    return torch.empty(sum(n for _, _, n in bucket), dtype=dtype, device=device)


def _collective_rank(rank: int, mode: str, port: int, bucket_mb: int, results) -> None:
    """One rank of the broadcast stand-in: rank 0 packs and sends, rank 1 receives and unpacks."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    device = "cpu" if mode == "gloo" else f"cuda:{rank if mode == 'nccl_2gpu' else 0}"
    dtype = torch.float32 if mode == "gloo" else torch.bfloat16
    if device != "cpu":
        torch.cuda.set_device(torch.device(device))
    backend = "gloo" if mode == "gloo" else "nccl"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, timeout=timedelta(seconds=120))  # fmt: skip
    try:
        shapes = state_shapes(_shape())
        state = _make_state(shapes, device, dtype, seed=rank)
        buckets = plan(shapes, bucket_mb * 2**20 // state[0].element_size())
        best = math.inf
        for _ in range(3):  # the first round warms the communicator
            dist.barrier()
            start = time.perf_counter()
            for bucket in buckets:
                flat = _flat(bucket, dtype, device)
                if rank == 0:
                    for i, off, n in bucket:
                        flat[off : off + n].copy_(state[i].reshape(-1))
                dist.broadcast(flat, src=0)
                if rank == 1:
                    for i, off, n in bucket:
                        state[i].copy_(flat[off : off + n].view_as(state[i]))
            if device != "cpu":
                torch.cuda.synchronize()
            dist.barrier()
            best = min(best, time.perf_counter() - start)
        checksum = sum(float(t.double().sum()) for t in state)  # equal on both after a sync
        results.put({"rank": rank, "seconds": best, "buckets": len(buckets), "sum": checksum})
    finally:
        dist.destroy_process_group()


def _ipc_rank(rank: int, bucket_mb: int, queue, acks, results) -> None:
    """CUDA IPC between two processes on one GPU (vLLM's ipc engine's way): rank 0 packs each
    bucket and hands the receiver a handle; rank 1 copies out of it and acknowledges."""
    import torch

    shapes = state_shapes(_shape())
    state = _make_state(shapes, "cuda", torch.bfloat16, seed=rank)
    buckets = plan(shapes, bucket_mb * 2**20 // 2)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        for k, bucket in enumerate(buckets):
            if rank == 0:
                flat = _flat(bucket, torch.bfloat16, "cuda")
                for i, off, n in bucket:
                    flat[off : off + n].copy_(state[i].reshape(-1))
                torch.cuda.synchronize()
                queue.put(flat)
                assert acks.get() == k  # the receiver is done with it: it may be freed
            else:
                flat = queue.get()
                for i, off, n in bucket:
                    state[i].copy_(flat[off : off + n].view_as(state[i]))
                torch.cuda.synchronize()
                del flat
                acks.put(k)
        best = min(best, time.perf_counter() - start)
    checksum = sum(float(t.double().sum()) for t in state)
    results.put({"rank": rank, "seconds": best, "buckets": len(buckets), "sum": checksum})


def _two_processes(target, args_of) -> list[dict]:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=args_of(r, results)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    rows = []
    while not results.empty():
        rows.append(results.get())
    for p in procs:
        if p.is_alive():
            p.kill()
    if len(rows) != 2:
        codes = [p.exitcode for p in procs]
        raise RuntimeError(f"stand-in ranks exited {codes} with {len(rows)} results")
    return sorted(rows, key=lambda r: r["rank"])


def _d2d_copy_s(nbytes: int, device: str) -> float:
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return _timed(lambda: dst.copy_(src), device, repeats=3)[0]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def transfer_part(bucket_mb: int) -> dict:
    import torch

    shapes = state_shapes(_shape())
    device, dtype = _device()
    nbytes = sum(math.prod(s) for _, s in shapes) * (2 if device == "cuda" else 4)
    result = {"bytes": nbytes, "bucket_mb": bucket_mb, "d2d_copy_s": _d2d_copy_s(nbytes, device)}
    modes = ["gloo"] if device == "cpu" else ["nccl_2gpu"] if torch.cuda.device_count() > 1 else []
    if device == "cuda" and not modes:
        modes = ["nccl_1gpu", "ipc_1gpu"]  # NCCL refuses one device twice: tried, then IPC
    for mode in modes:
        try:
            if mode == "ipc_1gpu":
                import torch.multiprocessing as mp

                ctx = mp.get_context("spawn")
                q, acks = ctx.Queue(), ctx.Queue()
                rows = _two_processes(
                    _ipc_rank, lambda r, res, q=q, a=acks: (r, bucket_mb, q, a, res)
                )
            else:
                port = _free_port()
                args = (mode, port, bucket_mb)
                rows = _two_processes(_collective_rank, lambda r, res, a=args: (r, *a, res))
        except Exception as e:  # noqa: BLE001 - report, try the next mode
            result[mode] = {"error": f"{type(e).__name__}: {e}"[:300]}
            continue
        seconds = max(r["seconds"] for r in rows)
        result[mode] = {
            "seconds": round(seconds, 4),
            "buckets": rows[0]["buckets"],
            "gb_per_s": round(nbytes / seconds / 1e9, 1),
            "vs_d2d_copy": round(seconds / result["d2d_copy_s"], 2),
            "delivered": abs(rows[0]["sum"] - rows[1]["sum"]) <= 1e-6 * abs(rows[0]["sum"]) + 1e-6,
        }
        _progress(f"transfer {mode}: {result[mode]}")
    result["d2d_copy_s"] = round(result["d2d_copy_s"], 5)
    return result
