"""Benchmark of exact entropy scoring; prints ONE JSON line.

- parity_vllm_vs_hf: max |H_vllm - H_hf| over a few sequences on a *trained* model (a random-init
  model's entropies all sit near log V and would hide numerical errors).
- peak_mem_mb / naive_peak_mem_mb: peak extra RSS of the chunked path vs naive full logits, per
  sequence length, each measured in a fresh subprocess (a psutil sampler thread; tracemalloc does
  not see torch's allocations). Random-init lm_head with Qwen2.5's vocabulary (151936).
- tokens_per_s_entropy / tokens_per_s_forward: a small-body Qwen2 with vocab 151936; the entropy
  path (body + chunked compiled entropy) vs a plain HF forward producing T x V logits, same input.

On a GPU (--device cuda --dtype bfloat16, used by bench/gpu_smoke.sh) peak memory is
torch.cuda.max_memory_allocated measured in-process, and --peak-tflops adds MFU (model FLOPs over
time over the peak); --heads/--kv-heads/--intermediate give the body a real model's shape,
--tile-sweep times the lm_head entropy per vocabulary tile, --speed-naive times full logits +
log_softmax entropy next to it. --arch llama makes the body a Llama (LlamaForCausalLM, tied
embeddings; SmolLM2-135M's family, bench/gpu_smollm2.sh) instead of a Qwen2. The defaults are the
CPU benchmark above, unchanged.

    .venv/bin/python bench/entropy.py [--model-dir runs/cache/base-...] [--threads 2]
    .venv/bin/python bench/entropy.py --smoke [--skip-vllm]   # tiny sizes: checks that it runs

--smoke (what the test suite runs, so that a refactor cannot break the bench unseen) sets tiny
defaults (SMOKE; explicit options still win) and measures nothing.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from entropy_memory import mem_child, mem_peak_mb, naive_entropy  # noqa: E402
from measure import best_time  # noqa: E402

DTYPES = ("float32", "bfloat16", "float16")
ARCHS = ("qwen2", "llama")
SMOKE = dict(
    vocab=1024, hidden=64, layers=1, chunk=64, vocab_tile=256, threads=1, speed_tokens=128,
    mem_lengths="128", repeats=1, warmup=0,
)  # fmt: skip


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--model-dir",
        default="",
        help="trained HF model dir for the parity check "
        "(default: the first runs/cache/base-* with a tokenizer)",
    )
    p.add_argument("--vocab", type=int, default=151936, help="vocabulary of the speed/memory model")
    p.add_argument("--hidden", type=int, default=256, help="hidden size of the speed/memory model")
    p.add_argument("--layers", type=int, default=2, help="layers of the speed model body")
    p.add_argument("--heads", type=int, default=0, help="attention heads (0: hidden / 64)")
    p.add_argument("--kv-heads", type=int, default=0, help="key/value heads (0: as --heads)")
    p.add_argument("--intermediate", type=int, default=0, help="MLP width (0: 2 x hidden)")
    p.add_argument(
        "--arch", default="qwen2", choices=ARCHS, help="body family (tied embeddings either way)"
    )
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="model dtype")
    p.add_argument("--chunk", type=int, default=1024, help="rows of h per lm_head tile")
    p.add_argument("--vocab-tile", type=int, default=2048, help="vocabulary columns per tile")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--speed-tokens", type=int, default=1024, help="sequence length for speed")
    p.add_argument("--mem-lengths", default="1024,4096,16384", help="lengths for memory")
    p.add_argument(
        "--naive-max-gb",
        type=float,
        default=8.0,
        help="skip naive memory runs whose logits would need more than this",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (best is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    p.add_argument("--skip-vllm", action="store_true", help="skip the vLLM parity part")
    p.add_argument("--tile-sweep", default="", help="vocab tiles to time the lm_head entropy with")
    p.add_argument(
        "--speed-naive", action="store_true", help="also time full logits + log_softmax entropy"
    )
    p.add_argument(
        "--peak-tflops", type=float, default=0.0, help="peak FLOP/s of the device for MFU (0: off)"
    )
    p.add_argument("--_mem-child", nargs=2, metavar=("MODE", "T"), help=argparse.SUPPRESS)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (SMOKE): checks that it runs")
    if "--smoke" in sys.argv[1:]:
        p.set_defaults(**SMOKE)
    return p.parse_args()


def _progress(msg: str) -> None:
    print(f"[bench/entropy] {msg}", file=sys.stderr, flush=True)


def _is_cuda(args) -> bool:
    return args.device.startswith("cuda")


def _mem(args, mode: str, t: int) -> float | str:
    """CPU: RSS in a fresh subprocess; CUDA: allocator statistics in-process."""
    _progress(f"memory {mode} at {t} tokens")
    if not _is_cuda(args):
        return _mem_in_subprocess(args, mode, t)
    import torch

    try:
        return round(mem_peak_mb(args, mode, t), 1)
    except torch.OutOfMemoryError:
        return "out of memory"
    finally:
        torch.cuda.empty_cache()


def _mem_in_subprocess(args, mode: str, t: int) -> float:
    cmd = [
        sys.executable,
        __file__,
        "--_mem-child",
        mode,
        str(t),
        "--vocab",
        str(args.vocab),
        "--hidden",
        str(args.hidden),
        "--chunk",
        str(args.chunk),
        "--vocab-tile",
        str(args.vocab_tile),
        "--threads",
        str(args.threads),
        "--dtype",
        args.dtype,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def _timed(fn, args) -> tuple[float | None, float | None]:
    """Best time and, on CUDA, peak memory allocated (MB, weights included); (None, None) on OOM."""
    import torch

    if not _is_cuda(args):
        return best_time(fn, args.repeats, warmup=args.warmup), None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        t = best_time(fn, args.repeats, args.device, args.warmup)
    except torch.OutOfMemoryError:
        return None, None
    finally:
        torch.cuda.empty_cache()
    return t, round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _body_classes(arch: str):
    """(config class, causal-LM class) of the body family."""
    import transformers

    name = {"qwen2": "Qwen2", "llama": "Llama"}[arch]
    return getattr(transformers, f"{name}Config"), getattr(transformers, f"{name}ForCausalLM")


def _body_config(args):
    config_cls, _ = _body_classes(args.arch)
    heads = args.heads or args.hidden // 64
    return config_cls(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=args.kv_heads or heads,
        head_dim=args.hidden // heads,
        intermediate_size=args.intermediate or 2 * args.hidden,
        max_position_embeddings=max(32768, args.speed_tokens),
        tie_word_embeddings=True,
        use_cache=False,
    )


def _flops(cfg, t: int) -> tuple[float, float]:
    """Forward FLOPs for t tokens, (body, lm_head): 2 per weight per token + causal attention."""
    d, q = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_key_value_heads * cfg.head_dim
    per_layer = 2 * t * (2 * d * q + 2 * d * kv + 3 * d * cfg.intermediate_size) + 2 * t * t * q
    return cfg.num_hidden_layers * per_layer, 2 * t * d * cfg.vocab_size


def _rate(flops: float, seconds: float | None, args) -> float | None:
    return None if seconds is None else float(f"{flops / seconds / (args.peak_tflops * 1e12):.4g}")


def _tile_sweep(h, w, args, head_flops: float) -> dict:
    """lm_head entropy time per vocabulary tile (rows per block: --chunk)."""
    from pipelines.core.entropy import token_entropies

    out, n = {}, args.speed_tokens
    for tile in [int(x) for x in args.tile_sweep.split(",") if x]:
        _progress(f"vocab tile {tile}")
        t, _ = _timed(lambda tile=tile: token_entropies(h, w, args.chunk, tile), args)
        row = {"lm_head_entropy_s": _round(t, 4), "tokens_per_s": _round(t and n / t, 1)}
        if args.peak_tflops:
            row["mfu"] = _rate(head_flops, t, args)
        out[str(tile)] = row
    return out


def _naive_head(h, w, args) -> float | str:
    """Time of full logits + log_softmax entropy, if its logits fit --naive-max-gb."""
    need_gb = 3 * h.shape[0] * args.vocab * 4 / 2**30  # logits, log_softmax, exp
    if need_gb > args.naive_max_gb:
        return f"skipped: needs ~{need_gb:.0f} GB"
    t, _ = _timed(lambda: naive_entropy(h, w), args)
    return "out of memory" if t is None else round(t, 4)


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a / b, 3)


def _speed(args) -> dict:
    import torch

    from pipelines.core.entropy import token_entropies

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = _body_config(args)
    _, model_cls = _body_classes(args.arch)
    _progress(f"building the {args.arch} body on {args.device} ({args.layers} layers)")
    with torch.device(args.device):
        model = model_cls(cfg)
    model = model.to(getattr(torch, args.dtype)).eval()
    ids = torch.randint(0, args.vocab, (1, args.speed_tokens)).to(args.device)
    w = model.get_output_embeddings().weight.detach()

    @torch.no_grad()
    def entropy_path():
        return token_entropies(
            model.model(input_ids=ids).last_hidden_state[0], w, args.chunk, args.vocab_tile
        )

    @torch.no_grad()
    def forward_logits():
        return model(input_ids=ids).logits

    with torch.no_grad():
        h = model.model(input_ids=ids).last_hidden_state[0]
    token_entropies(h[:8], w, args.chunk, args.vocab_tile)  # compiled before any timing
    _progress(f"speed at {args.speed_tokens} tokens: entropy path, forward, lm_head")
    t_ent, peak_ent = _timed(entropy_path, args)
    t_fwd, peak_fwd = _timed(forward_logits, args)
    t_head_ent, _ = _timed(lambda: token_entropies(h, w, args.chunk, args.vocab_tile), args)
    t_head_mm, _ = _timed(lambda: h @ w.T, args)
    n = args.speed_tokens
    result = {
        "tokens_per_s_entropy": _round(t_ent and n / t_ent, 1),
        "tokens_per_s_forward": _round(t_fwd and n / t_fwd, 1),
        "entropy_vs_forward_speed": _ratio(t_fwd, t_ent),
        "lm_head_only": {
            "entropy_s": _round(t_head_ent, 3),
            "bare_matmul_s": _round(t_head_mm, 3),
            "ratio": _ratio(t_head_mm, t_head_ent),
        },
    }
    body_flops, head_flops = _flops(cfg, n)
    if _is_cuda(args):
        from pipelines.core import entropy

        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        result |= {
            "params": sum(p.numel() for p in model.parameters()),
            "entropy_update_compiled": not entropy._compile_failed,  # else eager fallback
            "weights_mb": round(weights / 2**20, 1),
            "peak_mem_mb_entropy_path": peak_ent,
            "peak_mem_mb_forward": peak_fwd,
        }
    if args.speed_naive:
        naive = _naive_head(h, w, args)
        result["lm_head_only"]["naive_s"] = naive
        if isinstance(naive, float):
            result["lm_head_only"]["naive_vs_entropy"] = _ratio(naive, t_head_ent)
    if args.peak_tflops:
        result["mfu"] = {
            "entropy_path": _rate(body_flops + head_flops, t_ent, args),
            "forward": _rate(body_flops + head_flops, t_fwd, args),
            "lm_head_entropy": _rate(head_flops, t_head_ent, args),
            "lm_head_bare_matmul": _rate(head_flops, t_head_mm, args),
            "peak_tflops": args.peak_tflops,
            "flops_entropy_path": body_flops + head_flops,
        }
    if args.tile_sweep:
        result["vocab_tile_sweep"] = _tile_sweep(h, w, args, head_flops)
    return result


def _default_model_dir() -> str:
    for d in sorted(glob.glob(str(REPO / "runs" / "cache" / "base-*"))):
        if Path(d, "config.json").is_file() and Path(d, "tokenizer.json").is_file():
            return d
    raise SystemExit("no trained base in runs/cache: run `policylong prepare-base` or --model-dir")


def _parity(args) -> dict:
    import torch

    from actors.hf_backend import HFBackend
    from actors.vllm_backend import VLLMBackend
    from pipelines.core.entropy import token_entropies

    model_dir = args.model_dir or _default_model_dir()
    hf = HFBackend(model_dir)
    vocab = hf.lm_head_weight().shape[0]
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (17, 128, 500)]
    start = time.perf_counter()
    vllm = VLLMBackend(model_dir, memory_utilization=0.2, max_model_len=512)
    start_s = time.perf_counter() - start
    diffs = []
    for backend_pair in zip(hf.hidden_states(seqs), vllm.hidden_states(seqs), strict=True):
        a, b = (
            token_entropies(h, w, args.chunk, args.vocab_tile)
            for h, w in zip(backend_pair, (hf.lm_head_weight(), vllm.lm_head_weight()), strict=True)
        )
        diffs.append(float((a[1:] - b[1:]).abs().max()))
    vllm.shutdown()
    return {
        "parity_vllm_vs_hf": max(diffs),
        "vllm_start_s": round(start_s, 1),
        "parity_model": os.path.basename(model_dir),
    }


def main() -> None:
    args = _args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args._mem_child:
        mem_child(args)
        return
    lengths = [int(x) for x in args.mem_lengths.split(",") if x]
    result: dict = {}
    if not args.skip_vllm:
        result |= _parity(args)
    result["peak_mem_mb"] = {str(t): _mem(args, "chunked", t) for t in lengths}
    naive = {}
    for t in lengths:
        need_gb = 3 * t * args.vocab * 4 / 2**30  # logits, log_softmax, exp
        naive[str(t)] = (
            _mem(args, "naive", t)
            if need_gb <= args.naive_max_gb
            else f"skipped: needs ~{need_gb:.0f} GB"
        )
    result["naive_peak_mem_mb"] = naive
    result |= _speed(args)
    result |= {
        "vocab": args.vocab,
        "hidden": args.hidden,
        "chunk": args.chunk,
        "vocab_tile": args.vocab_tile,
        "threads": args.threads,
        "speed_tokens": args.speed_tokens,
    }
    if args.smoke:
        result["smoke"] = True
    if _is_cuda(args) or args.dtype != "float32":
        cfg = _body_config(args)
        result |= {
            "arch": args.arch,
            "device": args.device,
            "dtype": args.dtype,
            "layers": cfg.num_hidden_layers,
            "heads": cfg.num_attention_heads,
            "kv_heads": cfg.num_key_value_heads,
            "intermediate": cfg.intermediate_size,
            "repeats": args.repeats,
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
