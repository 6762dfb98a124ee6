"""Helper of bench/gpu_issue30.sh (issue 30, item 3): the parts that bench/entropy.py lacks.

    python3 bench/gpu_issue30.py fused --tokens T      lm_head-only exact entropy variants
    python3 bench/gpu_issue30.py fsdp2 --tokens T      one FSDP2 step via train_strategy.py
    python3 bench/gpu_issue30.py transfer              the NCCL weight-transfer stand-in
    python3 bench/gpu_issue30.py combine --parts DIR [--out DIR]     ONE JSON line

Shape: Qwen2.5-3B (hidden 2048, 36 layers, 16 heads, 2 kv heads, MLP 11008, vocab 151936, tied
embeddings), random init, bf16 on one GPU. GPU_SMOKE_TINY=1: tiny shapes on CPU (float32, gloo)
so that every code path runs without a GPU (the suite's smoke test).

fused      h [T, 2048] and the lm_head [151936, 2048] in bf16: a bare bf16 matmul writing the
           logits (the speed goal's reference: >= 0.8x it), and the exact entropy by
           (a) pipelines/core/entropy.py (TF32 logits tiles + compiled online update), (b) the same
               online update on bf16 GEMMs with float32 output (torch.mm out_dtype, when this
               torch has it: bf16 products are exact in fp32, so as exact as (a) at bf16 speed),
           (c) our fused Triton kernel (bench/fused_entropy_triton.py: GEMM tiles and the
               online update in one kernel, the logits never written), its fastest config;
           (d) Liger-Kernel's fused linear scaled cross entropy with return_entropy (its SM90
               CuTe kernel on H100/H200), when importable (LIGER_DIR may name an unpacked
               wheel): its entropy is returned in bf16, so it is expected to miss 1e-5;
           each with its max error vs a float64 reference on the first 1024 rows (goal 1e-5).
fsdp2      pipelines/steps/train_strategy.py's FSDP2Strategy wraps pipelines/steps/train.py's
BlockedCausalLM
           (block train.logit_block_tokens = 2048) at world size 1: one warm-up and one timed
           step at T tokens: tokens/s, MFU (989 TFLOP/s), peak memory beside the README's
           per-GPU estimate recomputed for world size 1 and for its 32 GPUs.
transfer   vLLM's NCCL engine is not on the device image: a raw torch.distributed stand-in
           sends the Qwen2.5-3B bf16 state in the same packed buckets (stages.weight_bucket_mb
           256) from one process to another, against one device-to-device copy of the same bytes.
           Two GPUs: NCCL between them. One GPU: NCCL refuses two ranks on one device ("Duplicate
           GPU"), reported; then CUDA IPC between the two processes (vLLM's ipc engine's way).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TINY = os.environ.get("GPU_SMOKE_TINY") == "1"
if TINY:  # CPU: the Triton kernel runs in Triton's interpreter (set before triton is imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")
PEAK_TFLOPS = 989.0
QWEN3B = dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16)
QWEN3B |= dict(num_key_value_heads=2, intermediate_size=11008, vocab_size=151936)
TINY_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2)
TINY_SHAPE |= dict(num_key_value_heads=1, intermediate_size=128, vocab_size=1024)


def _progress(msg: str) -> None:
    print(f"[gpu_issue30] {msg}", file=sys.stderr, flush=True)


def _device():
    import torch

    cuda = torch.cuda.is_available() and not TINY
    return ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)


def _shape() -> dict:
    return TINY_SHAPE if TINY else QWEN3B


def _timed(fn, device: str, repeats: int = 2) -> tuple[float, object]:
    """Best of `repeats` after one untimed run; the last result."""
    import torch

    out = fn()
    best = math.inf
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


# ---- fused: lm_head-only exact entropy variants ---------------------------------------------


def _reference(h, w, rows: int):
    """float64 entropies of the first `rows` rows (vocabulary in blocks: bounded memory)."""
    import torch

    x = h[:rows].double()
    m = s = u = None
    for v0 in range(0, w.shape[0], 16384):
        z = x @ w[v0 : v0 + 16384].double().T
        zmax = z.amax(dim=-1)
        if m is None:
            m, s, u = zmax, torch.zeros_like(zmax), torch.zeros_like(zmax)
        m_new = torch.maximum(m, zmax)
        scale = torch.exp(m - m_new)
        zc = z - m_new[:, None]
        e = zc.exp()
        u = scale * (u + (m - m_new) * s) + (e * zc).sum(-1)
        s = scale * s + e.sum(-1)
        m = m_new
    return s.log() - u / s


def _out_fp32_entropy(h, w, chunk: int, tile: int):
    """pipelines/core/entropy.py's online update on bf16 GEMMs that write float32 (no TF32)."""
    import torch

    from pipelines.core.entropy import _online_update

    out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
    for r0 in range(0, h.shape[0], chunk):
        rows = h[r0 : r0 + chunk]
        m = s = u = None
        for v0 in range(0, w.shape[0], tile):
            z = torch.mm(rows, w[v0 : v0 + tile].T, out_dtype=torch.float32)
            if m is None:
                m, s, u = z.amax(dim=-1), torch.zeros_like(z[:, 0]), torch.zeros_like(z[:, 0])
            m, s, u = _online_update(z, m, s, u)
        out[r0 : r0 + rows.shape[0]] = s.log() - u / s
    return out


def _liger_entropy():
    """Liger's fused linear scaled CE with entropy, or the reason it cannot run here."""
    if os.environ.get("LIGER_DIR"):
        sys.path.insert(0, os.environ["LIGER_DIR"])
    try:
        from liger_kernel.ops import LigerFusedLinearScaledCrossEntropyFunction as F
    except Exception as e:  # noqa: BLE001 - not installed, or its CUDA toolchain missing
        return f"skipped: liger-kernel not importable ({type(e).__name__}: {e})"[:300]

    def run(h, w):
        import torch

        target = torch.zeros(h.shape[0], dtype=torch.long, device=h.device)
        return F.apply(h, w, target, return_entropy=True)[1]

    return run


def _triton_entropy(h, w, device: str):
    """bench/fused_entropy_triton.py with its fastest config here (CPU: Triton's interpreter)."""
    try:
        from bench.fused_entropy_triton import CONFIGS, fused_entropy
    except Exception as e:  # noqa: BLE001 - no triton here
        return f"skipped: triton not importable ({type(e).__name__}: {e})"[:300]
    if device == "cpu":
        return lambda: fused_entropy(h, w, (16, 64, 16, 4, 1))
    timings = {}
    for config in CONFIGS:
        try:
            timings[config] = _timed(lambda c=config: fused_entropy(h, w, c), device, 1)[0]
        except Exception as e:  # noqa: BLE001 - a config that does not compile here
            _progress(f"triton config {config}: {type(e).__name__}: {e}"[:200])
    if not timings:
        return "error: no config compiled"
    best = min(timings, key=timings.get)
    _progress(f"triton configs (s): { {str(k): round(v, 4) for k, v in timings.items()} }")
    return lambda: fused_entropy(h, w, best)


def _variant(name: str, fn, ref, device: str, t_mm: float) -> dict:
    import torch

    try:
        seconds, got = _timed(fn, device)
    except Exception as e:  # noqa: BLE001 - one variant failing must not hide the others
        return {"error": f"{type(e).__name__}: {e}"[:300]}
    err = (got[: ref.shape[0]].double() - ref).abs().max().item()
    row = {"seconds": round(seconds, 4), "vs_bare_matmul": round(t_mm / seconds, 3)}
    row |= {"max_err_vs_float64": float(f"{err:.3g}"), "exact_1e-5": err <= 1e-5}
    row["dtype_out"] = str(got.dtype).removeprefix("torch.")
    _progress(f"fused {name}: {row}")
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def fused_part(tokens: int) -> dict:
    import torch

    from pipelines.core.entropy import entropies_of_rows

    device, dtype = _device()
    shape = _shape()
    d, vocab = shape["hidden_size"], shape["vocab_size"]
    tokens = 256 if TINY else tokens
    g = torch.Generator(device=device).manual_seed(0)
    # Final-norm-like hidden states and a 0.02-init lm_head: logits std ~ 1-3, as a trained LM's.
    h = torch.randn(tokens, d, generator=g, device=device).to(dtype)
    w = (torch.randn(vocab, d, generator=g, device=device) * 0.05).to(dtype)
    chunk, tile = (64, 256) if TINY else (2048, 8192)
    ref = _reference(h, w, 64 if TINY else 1024)
    buf = torch.empty(min(tokens, 16384), vocab, dtype=dtype, device=device)

    def bare(buf=buf):  # the same FLOPs as the full logits, written block by block into one buffer
        for r0 in range(0, tokens, buf.shape[0]):
            rows = h[r0 : r0 + buf.shape[0]]
            torch.mm(rows, w.T, out=buf[: rows.shape[0]])

    t_mm, _ = _timed(bare, device)
    bare = buf = None  # frees the logits buffer
    result = {"tokens": tokens, "bare_bf16_matmul_s": round(t_mm, 4), "chunk": chunk}
    result["vocab_tile"] = tile
    result["current_tf32"] = _variant(
        "current", lambda: entropies_of_rows(h, w, chunk, tile), ref, device, t_mm
    )
    result["bf16_gemm_fp32_out"] = _variant(
        "out_fp32", lambda: _out_fp32_entropy(h, w, chunk, tile), ref, device, t_mm
    )
    triton_fn = _triton_entropy(h, w, device)
    result["triton_fused"] = (
        triton_fn
        if isinstance(triton_fn, str)
        else _variant("triton", triton_fn, ref, device, t_mm)
    )
    liger = _liger_entropy()
    result["liger"] = (
        liger
        if isinstance(liger, str)
        else _variant("liger", lambda: liger(h, w), ref, device, t_mm)
    )
    return result


# ---- fsdp2: one step through pipelines/steps/train_strategy.py
# -------------------------------------


def readme_estimate_gb(tokens: int, world: int, params: float = 3.09e9) -> float:
    """README's per-GPU memory table (Qwen2.5-3B) at `tokens` per GPU and `world` GPUs."""
    scale = tokens / 131072
    state = 16 * params / world / 1e9  # fp32 param + grad + Adam's two states, sharded
    return round(state + 0.9 + 19.3 * scale + 12 * scale + 2.5, 1)


def fsdp2_part(tokens: int) -> dict:
    import torch
    import torch.distributed as dist
    import transformers

    from bench.gpu_smoke import _init_process_group, _train_flops, _train_steps
    from pipelines.steps.train import BlockedCausalLM
    from pipelines.steps.train_strategy import FSDP2Strategy

    device, _ = _device()
    tokens = 512 if TINY else tokens
    if device == "cuda":
        torch.cuda.set_device(0)
    _init_process_group("nccl" if device == "cuda" else "gloo")
    try:
        shape = _shape()
        head_dim = shape["hidden_size"] // shape["num_attention_heads"]
        cfg = transformers.Qwen2Config(
            **shape, head_dim=head_dim, tie_word_embeddings=True, use_cache=False,
            max_position_embeddings=max(32768, tokens),
        )  # fmt: skip
        torch.manual_seed(0)
        with torch.device(device):
            policy = transformers.AutoModelForCausalLM.from_config(cfg)
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy.train()
        model = FSDP2Strategy(0, torch.device(device)).wrap(BlockedCausalLM(policy, 2048))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        losses, seconds = _train_steps(model, opt, cfg, tokens, 1, device)
        params = sum(p.numel() for p in model.parameters())
        result = {"tokens": tokens, "tokens_per_s": round(tokens / seconds, 1)}
        result["mfu"] = float(f"{_train_flops(cfg, tokens) / seconds / PEAK_TFLOPS / 1e12:.4g}")
        result |= {"step_s": round(seconds, 2), "losses": [round(x, 4) for x in losses]}
        result |= {"loss_finite": all(math.isfinite(x) for x in losses), "params": params}
        result["strategy"] = "pipelines.steps.train_strategy.FSDP2Strategy (world size 1)"
        if device == "cuda":
            result["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 1)
        result["readme_estimate_gb_world1"] = readme_estimate_gb(tokens, 1, params)
        result["readme_estimate_gb_world32"] = readme_estimate_gb(tokens, 32, params)
        return result
    finally:
        dist.destroy_process_group()


# ---- combine and command line -----------------------------------------------------------------


def combine(parts: Path, out: str) -> dict:
    """Every part's JSON (or its error and log tail) in one object; written to OUT if set."""
    import torch

    result: dict = {"tiny": TINY, "torch": torch.__version__}
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name(0)
    for rc_file in sorted(parts.glob("*.rc")):
        name = rc_file.stem
        rc = rc_file.read_text().strip()
        lines = (parts / f"{name}.json").read_text().strip().splitlines()
        try:
            result[name] = json.loads(lines[-1]) if rc == "0" else None
        except (IndexError, json.JSONDecodeError):
            result[name] = None
        if result[name] is None:
            tail = (
                (parts / f"{name}.log").read_text()[-600:]
                if (parts / f"{name}.log").exists()
                else ""
            )
            result[name] = {"error": f"exit {rc}", "log_tail": tail}
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gpu_issue30.json").write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("part", choices=("fused", "fsdp2", "transfer", "combine"))
    p.add_argument("--tokens", type=int, default=32768, help="fused / fsdp2: tokens")
    p.add_argument("--bucket-mb", type=int, default=256, help="transfer: bucket size")
    p.add_argument("--parts", default="", help="combine: folder of the parts' .json/.rc/.log")
    p.add_argument("--out", default=os.environ.get("OUT", ""), help="combine: where to write")
    args = p.parse_args()
    if args.part == "fused":
        result = fused_part(args.tokens)
    elif args.part == "fsdp2":
        result = fsdp2_part(args.tokens)
    elif args.part == "transfer":
        from bench.gpu_transfer_standin import transfer_part

        result = transfer_part(args.bucket_mb)
    else:
        result = combine(Path(args.parts), args.out)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
