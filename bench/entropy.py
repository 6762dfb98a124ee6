"""Benchmark of exact entropy scoring; prints ONE JSON line.

- parity_vllm_vs_hf: max |H_vllm - H_hf| over a few sequences on a *trained* model (a random-init
  model's entropies all sit near log V and would hide numerical errors).
- peak_mem_mb / naive_peak_mem_mb: peak extra RSS of the chunked path vs naive full logits, per
  sequence length, each measured in a fresh subprocess (a psutil sampler thread; tracemalloc does
  not see torch's allocations). Random-init lm_head with Qwen2.5's vocabulary (151936).
- tokens_per_s_entropy / tokens_per_s_forward: a small-body Qwen2 with vocab 151936; the entropy
  path (body + chunked compiled entropy) vs a plain HF forward producing T x V logits, same input.

    .venv/bin/python bench/entropy.py [--model-dir runs/cache/base-...] [--threads 2]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


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
    p.add_argument("--skip-vllm", action="store_true", help="skip the vLLM parity part")
    p.add_argument("--_mem-child", nargs=2, metavar=("MODE", "T"), help=argparse.SUPPRESS)
    return p.parse_args()


def _peak_rss_delta_mb(fn) -> float:
    """Run fn while a thread samples RSS every ms; peak minus the RSS just before, in MB."""
    import psutil

    proc = psutil.Process()
    base = proc.memory_info().rss
    peak, done = [base], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    fn()
    done.set()
    t.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return (peak[0] - base) / 2**20


def _mem_child(args: argparse.Namespace) -> None:
    import torch

    from pipelines.entropy import token_entropies

    mode, t = args._mem_child[0], int(args._mem_child[1])
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(args.vocab, args.hidden, generator=g) * 0.02
    h = torch.randn(t, args.hidden, generator=g)
    if mode == "chunked":
        token_entropies(h[:8], w, args.chunk, args.vocab_tile)  # compile outside the measurement
        delta = _peak_rss_delta_mb(lambda: token_entropies(h, w, args.chunk, args.vocab_tile))
    else:  # the obvious way: full logits, log_softmax, p * logp

        def naive():
            logp = torch.log_softmax(h @ w.T, dim=-1)
            return -(logp.exp() * logp).sum(-1)

        delta = _peak_rss_delta_mb(naive)
    print(json.dumps({"peak_mb": round(delta, 1)}))


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
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up (compilation, allocator)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _speed(args) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from pipelines.entropy import token_entropies

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64,
        head_dim=64,
        intermediate_size=2 * args.hidden,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    ids = torch.randint(0, args.vocab, (1, args.speed_tokens))
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
    t_ent = _best_time(entropy_path, args.repeats)
    t_fwd = _best_time(forward_logits, args.repeats)
    t_head_ent = _best_time(
        lambda: token_entropies(h, w, args.chunk, args.vocab_tile), args.repeats
    )
    t_head_mm = _best_time(lambda: h @ w.T, args.repeats)
    n = args.speed_tokens
    return {
        "tokens_per_s_entropy": round(n / t_ent, 1),
        "tokens_per_s_forward": round(n / t_fwd, 1),
        "entropy_vs_forward_speed": round(t_fwd / t_ent, 3),
        "lm_head_only": {
            "entropy_s": round(t_head_ent, 3),
            "bare_matmul_s": round(t_head_mm, 3),
            "ratio": round(t_head_mm / t_head_ent, 3),
        },
    }


def _default_model_dir() -> str:
    for d in sorted(glob.glob(str(REPO / "runs" / "cache" / "base-*"))):
        if Path(d, "config.json").is_file() and Path(d, "tokenizer.json").is_file():
            return d
    raise SystemExit("no trained base in runs/cache: run `policylong prepare-base` or --model-dir")


def _parity(args) -> dict:
    import torch

    from actors.hf_backend import HFBackend
    from actors.vllm_backend import VLLMBackend
    from pipelines.entropy import token_entropies

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
        _mem_child(args)
        return
    lengths = [int(x) for x in args.mem_lengths.split(",")]
    result: dict = {}
    if not args.skip_vllm:
        result |= _parity(args)
    result["peak_mem_mb"] = {str(t): _mem_in_subprocess(args, "chunked", t) for t in lengths}
    naive = {}
    for t in lengths:
        need_gb = 3 * t * args.vocab * 4 / 2**30  # logits, log_softmax, exp
        naive[str(t)] = (
            _mem_in_subprocess(args, "naive", t)
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
    print(json.dumps(result))


if __name__ == "__main__":
    main()
