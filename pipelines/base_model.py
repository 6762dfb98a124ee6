"""The embedded base policy pi_0: a tiny Qwen2-architecture causal LM pretrained at short context.

head_dim is 64 because vLLM's CPU attention rejects smaller heads. The model is saved with
`save_pretrained` so that every later step (HF backend, vLLM, Ray Train) loads it the standard way.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import Qwen2Config, Qwen2ForCausalLM

from pipelines.config import ModelSection, PretrainSection

log = logging.getLogger(__name__)


def build_model(cfg: ModelSection, vocab_size: int, eos_id: int) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.hidden_size // cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        torch_dtype=cfg.dtype,
    )
    return Qwen2ForCausalLM(config)


def pack(token_lists: list[list[int]], eos_id: int, seq_len: int) -> torch.Tensor:
    """Concatenate documents (eos between) and cut into rows of seq_len tokens."""
    flat = np.fromiter((t for ids in token_lists for t in [*ids, eos_id]), dtype=np.int64)
    rows = len(flat) // seq_len
    return torch.from_numpy(flat[: rows * seq_len].reshape(rows, seq_len))


def add_repeated_spans(blocks: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Copy a span of the first half of some rows into their second half.

    A few-million-token base never sees enough natural repetition to learn to copy from context
    (induction); without that no retrieved chunk can lower its entropy and verification finds
    nothing. Repeated spans in a share of the rows teach it within minutes.
    """
    out = blocks.clone()
    gen = torch.Generator().manual_seed(seed)
    rows, T = out.shape
    for i in torch.randperm(rows, generator=gen)[: int(rows * fraction)].tolist():
        length = int(torch.randint(8, max(9, T // 4), (1,), generator=gen))
        src = int(torch.randint(0, max(1, T // 2 - length), (1,), generator=gen))
        dst = int(torch.randint(T // 2, max(T // 2 + 1, T - length), (1,), generator=gen))
        out[i, dst : dst + length] = out[i, src : src + length]
    return out


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def mean_nll(model: Qwen2ForCausalLM, blocks: torch.Tensor, batch_size: int) -> float:
    """Mean next-token negative log-likelihood (nats) over all predicted positions."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        batch = blocks[i : i + batch_size]
        loss = model(input_ids=batch, labels=batch).loss
        n = batch.numel() - batch.shape[0]
        total, count = total + loss.item() * n, count + n
    return total / max(1, count)


def unigram_nll(train_blocks: torch.Tensor, eval_blocks: torch.Tensor, vocab_size: int) -> float:
    """The baseline: add-one-smoothed unigram model fit on the training tokens."""
    counts = torch.bincount(train_blocks.flatten(), minlength=vocab_size).double() + 1.0
    logp = torch.log(counts / counts.sum())
    targets = eval_blocks[:, 1:].flatten()  # the same positions the LM is scored on
    return float(-logp[targets].mean())


def pretrain(
    model: Qwen2ForCausalLM,
    train_blocks: torch.Tensor,
    heldout_blocks: torch.Tensor,
    cfg: PretrainSection,
    seed: int,
) -> dict:
    """Short-context pretraining; returns metrics (held-out perplexity vs unigram)."""
    torch.manual_seed(seed)
    torch.set_num_threads(cfg.threads)
    steps = max(1, cfg.max_tokens // (cfg.batch_size * cfg.seq_len))
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay
    )
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_blocks), generator=gen)
    train_rows = add_repeated_spans(train_blocks, cfg.repeat_fraction, seed)
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(steps), desc="pretrain base", unit="step")
    for step in bar:
        idx = order[(torch.arange(cfg.batch_size) + step * cfg.batch_size) % len(order)]
        batch = train_rows[idx]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, cfg.lr, cfg.warmup_steps)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    train_s = time.perf_counter() - start
    model_nll = mean_nll(model, heldout_blocks, cfg.batch_size)
    uni_nll = unigram_nll(train_blocks, heldout_blocks, model.config.vocab_size)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "train_tokens": steps * cfg.batch_size * cfg.seq_len,
        "train_s": round(train_s, 1),
        "train_tokens_per_s": round(steps * cfg.batch_size * cfg.seq_len / train_s, 1),
        "heldout_tokens": int(heldout_blocks.numel()),
        "heldout_ppl": math.exp(model_nll),
        "unigram_ppl": math.exp(uni_nll),
    }


def save_metrics(out_dir: Path, metrics: dict) -> None:
    (out_dir / "base_metrics.json").write_text(json.dumps(metrics, indent=2))
