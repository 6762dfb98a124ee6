"""Helper of bench/gpu_smoke.sh (issue 18, item 4): the FSDP2 part and the final JSON line.

    python3 bench/gpu_smoke.py fsdp2 [--shape smollm2] [--tokens T] [--steps N]
                                          one FSDP2 training stage step, prints one JSON line
    python3 bench/gpu_smoke.py combine --parts DIR [--out DIR]
                                          gathers the parts' outputs into ONE JSON line
    python3 bench/gpu_smoke.py combine-smollm2 --parts DIR [--out DIR]
                                          the same for bench/gpu_smollm2.sh (gpu_smollm2.json),
                                          with the GPU-hour estimate of the SmolLM2 experiment

fsdp2 (part c): a random-init Qwen2.5-0.5B-shaped model (hidden 896, 24 layers, 14 heads, 2 kv
heads, MLP 4864, vocab 151936) trained for a few steps at 8K tokens on one GPU the way a stage
trains: a world-size-1 process group (nccl; gloo on CPU), `fully_shard` per decoder layer and the
root, MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32), activation checkpointing
per layer, AdamW, gradient clipping, the blocked loss of pipelines/steps/train.py. Reports tokens/s
after one warm-up step, peak memory, MFU, the losses (finite?) and whether a full state dict can
be gathered (get_model_state_dict with full_state_dict=True, cpu_offload=True). --shape smollm2
trains a SmolLM2-135M-shaped Llama instead (hidden 576, 30 layers, 9 heads, 3 kv heads, MLP 1536,
vocab 49152, tied embeddings); --tokens/--steps set the sequence length and the timed steps.

The vLLM parts (b: vLLM-on-CUDA scorer parity with HF; d: NCCL broadcast into a vLLM engine) are
reported as skipped when vLLM is not installed: the device image has no vLLM and its wheel is too
big to carry there. Only torch, transformers and the standard library are imported (no Ray, no
vLLM, no faiss): pipelines/steps/train.py pulls in pipelines.core.config (pyyaml) and
pipelines.core.sample_log
(pyarrow), both on the image; if that import fails the plain HF loss is used and said so.

GPU_SMOKE_TINY=1 shrinks everything (hidden 64, 2 layers, vocab 1024, 512 tokens, float32, CPU,
gloo) so that every code path runs on a laptop in seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
TINY = os.environ.get("GPU_SMOKE_TINY") == "1"
PEAK_TFLOPS = 989.0  # H100/H200 SXM dense bf16 tensor-core peak


def _progress(msg: str) -> None:
    print(f"[gpu_smoke] {msg}", file=sys.stderr, flush=True)


SHAPES = {  # name: (transformers family, shape); both tie the embeddings
    "qwen05b": (
        "Qwen2",
        dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14)
        | dict(num_key_value_heads=2, intermediate_size=4864, vocab_size=151936),
    ),
    "smollm2": (
        "Llama",
        dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9)
        | dict(num_key_value_heads=3, intermediate_size=1536, vocab_size=49152),
    ),
}
TINY_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2)
TINY_SHAPE |= dict(num_key_value_heads=1, intermediate_size=128, vocab_size=1024)


def _model_config(name: str = "qwen05b", seq_len: int = 0):
    """Config of a named shape (TINY: the tiny shape in the same family)."""
    import transformers

    family, shape = SHAPES[name]
    shape = TINY_SHAPE if TINY else shape
    head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    config_cls = getattr(transformers, f"{family}Config")
    return config_cls(
        **shape,
        head_dim=head_dim,
        tie_word_embeddings=True,
        use_cache=False,
        max_position_embeddings=max(32768, seq_len),
    )


def _train_flops(cfg, t: int) -> float:
    """Model FLOPs of one training step (forward + backward = 3 forwards, recompute not counted)."""
    d, q = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_key_value_heads * cfg.head_dim
    per_layer = 2 * t * (2 * d * q + 2 * d * kv + 3 * d * cfg.intermediate_size) + 2 * t * t * q
    return 3 * (cfg.num_hidden_layers * per_layer + 2 * t * d * cfg.vocab_size)


def _loss_module(policy):
    """The blocked loss of pipelines/steps/train.py, or plain HF loss if it cannot be imported."""
    import torch

    try:
        from pipelines.steps.train import BlockedCausalLM
    except Exception as e:  # a missing package, or the repo mid-edit: say so, go on
        _progress(f"pipelines.steps.train not importable ({e}); plain HF loss")

        class PlainLoss(torch.nn.Module):
            def __init__(self, model):
                super().__init__()
                self.model = model

            def forward(self, input_ids, weight):
                return self.model(input_ids=input_ids, labels=input_ids).loss

        return PlainLoss(policy), "transformers (labels=input_ids)"
    return BlockedCausalLM(policy, 2048), "pipelines.steps.train.BlockedCausalLM (block 2048)"


def _init_process_group(backend: str) -> None:
    import torch.distributed as dist

    with socket.socket() as s:  # a free port for the world-size-1 rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
    os.environ.setdefault("LOCAL_RANK", "0")
    dist.init_process_group(backend, rank=0, world_size=1)


def _sharded_model(cfg, device: str, dtype):
    """Policy in float32 master weights, checkpointed and fully_shard-ed layer by layer."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        policy = AutoModelForCausalLM.from_config(cfg)
    policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.train()
    model, loss_name = _loss_module(policy)
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in policy.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model, loss_name


def _train_steps(model, opt, cfg, tokens: int, steps: int, device: str) -> tuple[list, float]:
    """steps + 1 training steps on random tokens; losses and seconds of all but the first."""
    import torch

    g = torch.Generator(device=device).manual_seed(1)
    losses, start = [], 0.0
    for step in range(steps + 1):
        if step == 1:
            _sync(device)
            start = time.perf_counter()
        ids = torch.randint(0, cfg.vocab_size, (1, tokens), generator=g, device=device)
        loss = model(ids, torch.ones(1, device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        _progress(f"fsdp2 step {step}: loss {losses[-1]:.4f}")
    _sync(device)
    return losses, time.perf_counter() - start


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _gather_full(model, cfg) -> dict:
    """Gather the full (unsharded) state dict on CPU, as pi_{k+1}'s save must."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.tensor import DTensor

    start = time.perf_counter()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    sd = get_model_state_dict(model, options=options)
    seconds = time.perf_counter() - start
    plain = all(not isinstance(v, DTensor) and v.device.type == "cpu" for v in sd.values())
    embed = next(v for k, v in sd.items() if k.endswith("embed_tokens.weight"))
    return {
        "ok": plain and tuple(embed.shape) == (cfg.vocab_size, cfg.hidden_size),
        "tensors": len(sd),
        "numel": sum(v.numel() for v in sd.values()),
        "finite": all(bool(torch.isfinite(v).all()) for v in sd.values()),
        "gather_s": round(seconds, 2),
    }


def fsdp2_part(shape: str = "qwen05b", tokens: int = 0, steps: int = 0) -> dict:
    """Part (c): one FSDP2 training stage step on one GPU (world size 1)."""
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available() and not TINY
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    tokens = tokens or (512 if TINY else 8192)
    steps = steps or (2 if TINY else 3)
    if cuda:
        torch.cuda.set_device(0)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    _init_process_group("nccl" if cuda else "gloo")
    try:
        cfg = _model_config(shape, tokens)
        _progress(f"fsdp2: {shape}, {cfg.num_hidden_layers} layers, {tokens} tokens on {device}")
        model, loss_name = _sharded_model(cfg, device, dtype)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        losses, seconds = _train_steps(model, opt, cfg, tokens, steps, device)
        result = {
            "shape": shape,
            "arch": cfg.model_type,
            "tokens": tokens,
            "timed_steps": steps,
            "tokens_per_s": round(tokens * steps / seconds, 1),
            "mfu": float(f"{_train_flops(cfg, tokens) * steps / seconds / PEAK_TFLOPS / 1e12:.4g}"),
            "losses": [round(x, 4) for x in losses],
            "loss_finite": all(math.isfinite(x) for x in losses),
            "params": sum(p.numel() for p in model.parameters()),
            "param_dtype": str(dtype).removeprefix("torch."),
            "reduce_dtype": "float32",
            "loss": loss_name,
            "backend": dist.get_backend(),
        }
        if cuda:
            result["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["full_state_dict"] = _gather_full(model, cfg)
        return result
    finally:
        dist.destroy_process_group()


def vllm_parts() -> tuple[dict, dict]:
    """Parts (b) and (d) need vLLM on CUDA; not on the device image, so reported as skipped."""
    try:
        found = importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        skipped = {"skipped": "vllm not installed on the device image"}
        return skipped, skipped
    msg = {"skipped": "vllm is installed, but gpu_smoke does not run the vLLM parts yet"}
    return msg, msg


def _read_part(parts: Path, name: str) -> dict:
    """A part's JSON line, or why there is none (its exit status and last stderr lines)."""
    rc_file, out, log = (parts / f"{name}.{ext}" for ext in ("rc", "json", "log"))
    rc = rc_file.read_text().strip() if rc_file.exists() else "missing"
    lines = out.read_text().strip().splitlines() if out.exists() else []
    if rc == "0" and lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    tail = log.read_text()[-600:] if log.exists() else ""
    why = {"124": "timed out", "137": "timed out (killed)", "missing": "did not run"}.get(
        rc, f"exit status {rc}"
    )
    return {"error": f"{why}: {tail}"}


def _device_info() -> dict:
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
    }


def combine(parts: Path, out: str) -> dict:
    """ONE JSON object from the parts, also written to $OUT/gpu_smoke.json."""
    result = _device_info()
    short, long = (_read_part(parts, name) for name in ("entropy_32k", "entropy_128k"))
    result["entropy"] = {
        "kernel": "pipelines.core.entropy.token_entropies (its lm_head matmuls run in float32)",
        "mfu_peak_tflops": f"{PEAK_TFLOPS:g} (H100/H200 dense bf16)",
        str(short.get("speed_tokens", "entropy_32k")): short,
        str(long.get("speed_tokens", "entropy_128k")): long,
    }
    result["fsdp2"] = _read_part(parts, "fsdp2")
    result["vllm_parity"], result["nccl_into_vllm"] = vllm_parts()
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "gpu_smoke.json").write_text(json.dumps(result) + "\n")
    return result


# The SmolLM2-135M experiment (8K -> 16K -> 32K) that combine-smollm2 prices. Assumptions, not
# measurements: the token budget per stage, and the screening yields of `policylong plan`
# (pipelines/driver/plan.py Assumptions, measured on the embedded default's runs).
SMOLLM2_STAGES = (16384, 32768)
SMOLLM2_TOKENS_PER_STAGE = 50_000_000
SAMPLES_PER_DOC, POSITIONS_PER_DOC, CANDIDATES_PER_POSITION = 0.31, 3.6, 3.9
CHUNK_TOKENS = 512  # index.chunk_tokens


def smollm2_estimate(entropy: dict, train: dict) -> dict:
    """GPU-hours per stage on the measuring GPU from measured tokens/s (see the constants above).

    train: tokens_per_stage / training tokens/s at the stage's length. Screening: every seed
    document is scored once at the stage's length (doc_tokens = seq_len, an upper bound) at the
    measured exact-entropy tokens/s. Verification: docs x positions x candidates passes of
    (chunk + seq_len / 2) tokens, priced at the exact-entropy tokens/s measured at 16K (the
    shortest length measured; verifier passes are shorter and skip most of the lm_head).
    """
    stages, total = [], 0.0
    verify_speed = entropy.get(str(SMOLLM2_STAGES[0]), {}).get("tokens_per_s_entropy")
    for seq_len in SMOLLM2_STAGES:
        train_speed = train.get(str(seq_len), {}).get("tokens_per_s")
        screen_speed = entropy.get(str(seq_len), {}).get("tokens_per_s_entropy")
        if not (train_speed and screen_speed and verify_speed):
            return {"error": f"no measured tokens/s at {seq_len} tokens"}
        samples = SMOLLM2_TOKENS_PER_STAGE // seq_len
        docs = math.ceil(samples / SAMPLES_PER_DOC)
        candidates = round(docs * POSITIONS_PER_DOC * CANDIDATES_PER_POSITION)
        verify_tokens = candidates * (CHUNK_TOKENS + seq_len // 2)
        hours = {
            "train_gpu_h": SMOLLM2_TOKENS_PER_STAGE / train_speed / 3600,
            "screen_gpu_h": docs * seq_len / screen_speed / 3600,
            "verify_gpu_h": verify_tokens / verify_speed / 3600,
        }
        stage_total = sum(hours.values())
        total += stage_total
        stages.append(
            {"seq_len": seq_len, "samples": samples, "seed_docs": docs, "candidates": candidates}
            | {"tokens_verified": verify_tokens}
            | {k: round(v, 4) for k, v in hours.items()}
            | {"total_gpu_h": round(stage_total, 4)}
        )
    return {
        "assumptions": {
            "tokens_per_stage": SMOLLM2_TOKENS_PER_STAGE,
            "samples_per_doc": SAMPLES_PER_DOC,
            "positions_per_doc": POSITIONS_PER_DOC,
            "candidates_per_position": CANDIDATES_PER_POSITION,
            "chunk_tokens": CHUNK_TOKENS,
            "doc_tokens": "the stage's seq_len (upper bound)",
        },
        "stages": stages,
        "total_gpu_h": round(total, 4),
    }


def combine_smollm2(parts: Path, out: str) -> dict:
    """ONE JSON object from bench/gpu_smollm2.sh's parts, also written to $OUT/gpu_smollm2.json."""
    result = _device_info() | {"model": "SmolLM2-135M shape, random init (LlamaForCausalLM)"}
    entropy = {
        "kernel": "pipelines.core.entropy.token_entropies (its lm_head matmuls run in float32)"
    }
    train = {"how": "bench/gpu_smoke.py fsdp2 --shape smollm2 (world size 1, bf16, checkpointing)"}
    for seq_len in SMOLLM2_STAGES:
        entropy[str(seq_len)] = _read_part(parts, f"entropy_{seq_len // 1024}k")
        train[str(seq_len)] = _read_part(parts, f"fsdp2_{seq_len // 1024}k")
    result |= {"mfu_peak_tflops": PEAK_TFLOPS, "entropy": entropy, "train": train}
    result["estimate"] = smollm2_estimate(entropy, train)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "gpu_smollm2.json").write_text(json.dumps(result) + "\n")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("part", choices=("fsdp2", "combine", "combine-smollm2"))
    p.add_argument("--shape", default="qwen05b", choices=sorted(SHAPES), help="fsdp2: model")
    p.add_argument("--tokens", type=int, default=0, help="fsdp2: tokens (0: 8192, tiny 512)")
    p.add_argument("--steps", type=int, default=0, help="fsdp2: timed steps (0: 3, tiny 2)")
    p.add_argument("--parts", default="", help="combine: folder of the parts' .json/.rc/.log")
    p.add_argument("--out", default=os.environ.get("OUT", ""), help="combine: where to write")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.part == "fsdp2":
        print(json.dumps(fsdp2_part(args.shape, args.tokens, args.steps)))
    elif args.part == "combine":
        print(json.dumps(combine(Path(args.parts), args.out)))
    else:
        print(json.dumps(combine_smollm2(Path(args.parts), args.out)))


if __name__ == "__main__":
    main()
