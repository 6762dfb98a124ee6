"""The embedded base policy pi_0: a tiny Qwen2-architecture causal LM pretrained at short context.

head_dim is 64 because vLLM's CPU attention rejects smaller heads. The model is saved with
`save_pretrained` so that every later step (HF backend, vLLM, Ray Train) loads it the standard way.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import Qwen2Config, Qwen2ForCausalLM

from pipelines.core.config import ModelSection, PretrainSection

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


def join_documents(token_lists: list[list[int]], eos_id: int) -> np.ndarray:
    """One token stream: every document followed by EOS, as in pretraining."""
    return np.fromiter((t for ids in token_lists for t in [*ids, eos_id]), dtype=np.int64)


def pack(token_lists: list[list[int]], eos_id: int, seq_len: int) -> torch.Tensor:
    """Concatenate documents (eos between) and cut into rows of seq_len tokens."""
    flat = join_documents(token_lists, eos_id)
    rows = len(flat) // seq_len
    return torch.from_numpy(flat[: rows * seq_len].reshape(rows, seq_len))


def add_repeated_spans(
    blocks: torch.Tensor, fraction: float, seed: int, order: torch.Tensor | None = None
) -> tuple:
    """Copy a span of the first half of some rows into their second half.

    Returns (rows, copied): copied marks the tokens a policy that reads its context can predict
    from the earlier span (all of the copy but its first token). The copy loss on them keeps the
    induction heads of the warm-up alive and stretches them to the distances of real text.

    `order` is the order the rows are trained in: the rows with a span are then spread evenly
    over it (every batch holds its share). Picking them with a permutation from the trainer's
    seed would repeat the trainer's own order and put them all in the first steps.
    """
    out = blocks.clone()
    copied = torch.zeros_like(out, dtype=torch.bool)
    gen = torch.Generator().manual_seed(seed)
    rows, T = out.shape
    n = int(rows * fraction)
    if order is None:
        order = torch.randperm(rows, generator=gen)
    chosen = order[(torch.arange(n) * rows) // max(1, n)] if n else order[:0]
    for i in chosen.tolist():
        length = int(torch.randint(8, max(9, T // 4), (1,), generator=gen))
        src = int(torch.randint(0, max(1, T // 2 - length), (1,), generator=gen))
        dst = int(torch.randint(T // 2, max(T // 2 + 1, T - length), (1,), generator=gen))
        out[i, dst : dst + length] = out[i, src : src + length]
        copied[i, dst + 1 : dst + length] = True
    return out, copied


def copy_rows(
    tokens: torch.Tensor, rows: int, length: int, span: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of random tokens (drawn from `tokens`) in which a span recurs at a random distance:
    the recurring tokens can only be predicted by finding the earlier occurrence and copying
    what followed it (an induction head). The distance must vary: with a fixed one (say, the
    second half repeating the first) a head that attends a fixed offset back solves the task,
    and nothing carries over to real text (measured: long-copy gain 0.0 after such a warm-up)."""
    x = tokens[torch.randint(0, len(tokens), (rows, length), generator=gen)]
    copied = torch.zeros_like(x, dtype=torch.bool)
    for i in range(rows):
        src = int(torch.randint(0, length - 2 * span + 1, (1,), generator=gen))
        dst = int(torch.randint(src + span, length - span + 1, (1,), generator=gen))
        x[i, dst : dst + span] = x[i, src : src + span]
        copied[i, dst + 1 : dst + span] = True
    return x, copied


def lm_and_copy_loss(
    model: Qwen2ForCausalLM,
    x: torch.Tensor,
    copied: torch.Tensor,
    copy_weight: float,
    vocab: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float]:
    """(mean next-token NLL + copy_weight x mean NLL over the copied tokens, that copied-token
    NLL as a number: nan without copied tokens).

    The plain LM loss alone dilutes the copy signal in the few copyable tokens; the second term
    gives it the weight that makes induction form in minutes instead of never. With `vocab`,
    the softmax runs over those token ids only (the warm-up draws from them: 1/16 of the
    lm_head's cost)."""
    hidden = model.model(input_ids=x).last_hidden_state[:, :-1]
    targets = x[:, 1:]
    weight = model.lm_head.weight
    if vocab is not None:
        weight = weight[vocab]
        lookup = torch.full((model.config.vocab_size,), -1, dtype=torch.long, device=x.device)
        lookup[vocab] = torch.arange(len(vocab), device=x.device)
        targets = lookup[targets]
    nll = F.cross_entropy((hidden @ weight.T).flatten(0, 1), targets.flatten(), reduction="none")
    mask = copied[:, 1:].flatten()
    if not mask.any():
        return nll.mean(), float("nan")
    copy_nll = nll[mask].mean()
    return nll.mean() + copy_weight * copy_nll, float(copy_nll.detach())


class FormationWatch:
    """Says when induction has formed: the copied tokens' NLL, averaged over the last `window`
    steps, fell below `threshold` (from ~ln(copy_vocab) before the phase change to ~0.3 after)."""

    def __init__(self, threshold: float, window: int = 25):
        self.threshold, self.recent = threshold, deque(maxlen=window)

    def formed(self, copy_nll: float) -> bool:
        self.recent.append(copy_nll)
        full = len(self.recent) == self.recent.maxlen
        return full and sum(self.recent) / len(self.recent) < self.threshold


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


Part = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # rows, copied mask, vocab


def _train_steps(model, opt, steps: int, parts, cfg: PretrainSection, desc: str, lr: float,
                 watch: FormationWatch | None = None) -> int:  # fmt: skip
    """AdamW steps on the summed loss of the parts each step draws; returns the steps taken.

    Warmup + cosine over `steps`; with a `watch`, the rate stays at `lr` after the warmup (the
    phase ends when the watch says so, not at a planned step) and the phase stops early."""
    model.train()
    bar = tqdm(range(steps), desc=desc, unit="step")
    for step in bar:
        rate = lr_at(step, steps, lr, cfg.warmup_steps)
        for group in opt.param_groups:
            group["lr"] = lr if watch is not None and step >= cfg.warmup_steps else rate
        losses = [
            lm_and_copy_loss(model, x, copied, cfg.copy_loss_weight, vocab)
            for x, copied, vocab in parts(step)
        ]
        loss = sum(total for total, _ in losses)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", copy_nll=f"{losses[0][1]:.2f}")
        if watch is not None and watch.formed(losses[0][1]):
            bar.close()
            return step + 1
    return steps


def pretrain(
    model: Qwen2ForCausalLM,
    train_blocks: torch.Tensor,
    heldout_blocks: torch.Tensor,
    cfg: PretrainSection,
    seed: int,
) -> dict:
    """Short-context pretraining in three phases; returns metrics (held-out perplexity vs
    unigram, time per phase).

    A few million tokens of natural text never repeat enough for induction heads (find the
    earlier occurrence of the current token, copy what followed) to form, and without them the
    policy cannot use its context at all: verification would measure noise. So:
      1. induction: short rows of random frequent tokens with a span recurring at a random
         distance (the softmax over those tokens only, 1/16 of the lm_head's cost);
      2. distance: the same at the full pretraining length, so the heads reach across it;
      3. text: language modelling on the corpus, with copied spans in a share of the rows and
         copy_mix_rows rows of phase 2 in every step, so the heads survive and carry over.
    """
    torch.manual_seed(seed)
    torch.set_num_threads(cfg.threads)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay
    )
    watch = FormationWatch(cfg.copy_formed_nll) if cfg.copy_formed_nll > 0 else None
    times, taken = {}, {}
    for name, steps, parts, lr in _phases(train_blocks, model.config.vocab_size, cfg, seed):
        start = time.perf_counter()
        phase_watch = watch if name == "induction" else None
        desc = f"pretrain base: {name}"
        taken[name] = _train_steps(model, opt, steps, parts, cfg, desc, lr, phase_watch)
        times[f"{name}_s"] = round(time.perf_counter() - start, 1)
    if watch is not None and taken["induction"] == cfg.copy_induction_steps:
        log.warning(
            "base model: induction did not form within pretrain.copy_induction_steps=%d steps "
            "(copied-token NLL stayed above pretrain.copy_formed_nll=%g): pi_0 may not copy",
            cfg.copy_induction_steps,
            cfg.copy_formed_nll,
        )
    return _metrics(model, train_blocks, heldout_blocks, cfg, times, taken)


def _phases(train_blocks: torch.Tensor, vocab_size: int, cfg: PretrainSection, seed: int):
    """The three phases as (name, steps, rows of step i, learning rate); one generator draws
    every phase's rows, in the order the phases run."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.bincount(train_blocks.flatten(), minlength=vocab_size)
    frequent = torch.argsort(counts, descending=True)[: cfg.copy_vocab]
    long_rows = max(1, cfg.copy_rows * cfg.copy_row_len // cfg.seq_len)  # same tokens per step

    def induction(_: int) -> list[Part]:
        rows = copy_rows(frequent, cfg.copy_rows, cfg.copy_row_len, cfg.copy_span, gen)
        return [(*rows, frequent)]

    def distance(_: int, n: int = long_rows) -> list[Part]:
        return [(*copy_rows(frequent, n, cfg.seq_len, cfg.copy_distance_span, gen), frequent)]

    order = torch.randperm(len(train_blocks), generator=gen)
    text_rows, text_copied = add_repeated_spans(train_blocks, cfg.repeat_fraction, seed, order)

    def text(step: int) -> list[Part]:
        idx = order[(torch.arange(cfg.batch_size) + step * cfg.batch_size) % len(order)]
        parts = [(text_rows[idx], text_copied[idx], None)]
        if cfg.copy_mix_rows:
            parts += distance(step, cfg.copy_mix_rows)
        return parts

    text_steps = max(1, cfg.max_tokens // (cfg.batch_size * cfg.seq_len))
    return [
        ("induction", cfg.copy_induction_steps, induction, cfg.copy_lr),
        ("distance", cfg.copy_distance_steps, distance, cfg.copy_lr),
        ("text", text_steps, text, cfg.lr),
    ]


def _metrics(model, train_blocks, heldout_blocks, cfg: PretrainSection, times, taken) -> dict:
    """Held-out perplexity vs the unigram's, and the long-copy gain at half the context."""
    from pipelines.core.long_copy import long_copy_gain

    model_nll = mean_nll(model, heldout_blocks, cfg.batch_size)
    uni_nll = unigram_nll(train_blocks, heldout_blocks, model.config.vocab_size)
    text_tokens = taken["text"] * cfg.batch_size * cfg.seq_len
    distance = cfg.seq_len // 2
    gain = long_copy_gain(model, heldout_blocks.flatten().tolist(), [distance], samples=12)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "phase_steps": taken,
        "copy_rows_tokens": (taken["induction"] + taken["distance"])
        * cfg.copy_rows
        * cfg.copy_row_len,
        "train_tokens": text_tokens,
        "train_s": round(sum(times.values()), 1),
        "phase_s": times,
        "train_tokens_per_s": round(text_tokens / max(1e-9, times["text_s"]), 1),
        "heldout_tokens": int(heldout_blocks.numel()),
        "heldout_ppl": math.exp(model_nll),
        "unigram_ppl": math.exp(uni_nll),
        "long_copy_gain": {"distance": distance, **gain[distance]},
    }


def save_metrics(out_dir: Path, metrics: dict) -> None:
    (out_dir / "base_metrics.json").write_text(json.dumps(metrics, indent=2))
