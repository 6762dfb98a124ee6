"""bench/entropy.py's memory comparison: the peak extra memory of the entropy of t random rows,
chunked (pipelines/core/entropy.py) or naive (full logits); on CPU measured in a fresh process
(`bench/entropy.py --_mem-child`), which calls mem_child here."""

from __future__ import annotations

import argparse
import json

from measure import peak_cuda_delta_mb, peak_rss_delta_mb


def naive_entropy(h, w):
    """The obvious way: full logits (in float32), log_softmax, p * logp."""
    import torch

    logp = torch.log_softmax((h @ w.T).float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def mem_peak_mb(args: argparse.Namespace, mode: str, t: int) -> float:
    """Peak extra memory of the entropy of t random rows: chunked (the project's) or naive."""
    import torch

    from pipelines.core.entropy import token_entropies

    dev, dtype = args.device, getattr(torch, args.dtype)
    g = torch.Generator(device=dev).manual_seed(0)
    w = (torch.randn(args.vocab, args.hidden, generator=g, device=dev) * 0.02).to(dtype)
    h = torch.randn(t, args.hidden, generator=g, device=dev).to(dtype)
    measure = peak_cuda_delta_mb if args.device.startswith("cuda") else peak_rss_delta_mb
    if mode == "chunked":
        token_entropies(h[:8], w, args.chunk, args.vocab_tile)  # compile outside the measurement
        return measure(lambda: token_entropies(h, w, args.chunk, args.vocab_tile))
    return measure(lambda: naive_entropy(h, w))


def mem_child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    mode, t = args._mem_child[0], int(args._mem_child[1])
    print(json.dumps({"peak_mb": round(mem_peak_mb(args, mode, t), 1)}))
