"""The long-copy probe: does a causal LM read its context at distance D?

Training loss and short-context perplexity barely move when a model learns to use distant
context, so they cannot tell a checkpoint that reads its long context from one that does not.
This probe asks it directly. A 24-token span S of held-out text occurs twice, D tokens apart:

    with copy:     S                  + F  + S      (length D + span)
    without copy:  S' (other text)    + F  + S      (identical except the first span tokens)

D is the distance from the first occurrence's start to the second's start: the second S starts at
position D (0-based), the filler F has D - span tokens. Each sample is one contiguous window W of
held-out text, D tokens long, plus a span S from elsewhere in the stream (never overlapping W):
"without copy" is W + S (natural text, then S) and "with copy" is the same with W's first `span`
tokens replaced by S, so both sequences have the same length, the same tokens at every position
from `span` on, and the same positions for the scored tokens.

Scored tokens: the second S's tokens 2..span (span - 1 of them). Its first token cannot be copied:
nothing before it says that a repeat starts there (the filler before it is the same in both
sequences); once the model has seen S[0] it can find it earlier and copy what followed.

    gain(D) = mean NLL(S[1:] | without copy) - mean NLL(S[1:] | with copy)     (nats/token)

averaged over the scored tokens and then over `samples` samples. A model that copies has a gain of
several nats (SmolLM2-135M: 3.67 at D = 128); one that does not read its context, ~0.

The samples depend only on the token stream, the seed and D (not on the model or on which other
distances are asked for), so every checkpoint of a run sees identical inputs and their gains are
comparable.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pipelines.errors import UserError  # noqa: E402

log = logging.getLogger(__name__)
SPAN, SAMPLES = 24, 12


def copy_probe_inputs(
    token_stream, distance: int, span: int = SPAN, samples: int = SAMPLES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(with_copy, without_copy): two int64 arrays of shape (samples, distance + span)."""
    stream = np.asarray(token_stream, dtype=np.int64)
    if distance < span + 1:
        raise UserError(f"probe distance {distance} must exceed the span ({span} tokens)")
    if len(stream) < distance + 2 * span:
        raise UserError(
            f"probe distance {distance} needs at least {distance + 2 * span} held-out tokens; "
            f"the held-out stream has {len(stream)}"
        )
    rng = np.random.default_rng([seed, distance])  # the same samples whatever else is asked
    with_copy, without = [], []
    for _ in range(samples):
        a = int(rng.integers(0, len(stream) - distance + 1))  # window W = stream[a : a + D]
        while True:  # S = stream[b : b + span], anywhere outside W
            b = int(rng.integers(0, len(stream) - span + 1))
            if b + span <= a or b >= a + distance:
                break
        window, s = stream[a : a + distance], stream[b : b + span]
        without.append(np.concatenate([window, s]))
        with_copy.append(np.concatenate([s, window[span:], s]))
    return np.stack(with_copy), np.stack(without)


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def span_nll(model, ids: np.ndarray, span: int = SPAN, batch_size: int = 8) -> np.ndarray:
    """Per row, the mean NLL (float32 logits) of the last `span` tokens but their first."""
    model.eval()
    device, out = _model_device(model), []
    for i in range(0, len(ids), batch_size):
        batch = torch.as_tensor(ids[i : i + batch_size], device=device)
        try:  # only the last span positions' logits: (batch, span, vocab), not the whole row's
            logits = model(input_ids=batch, logits_to_keep=span).logits
        except TypeError:  # a model class without logits_to_keep
            logits = model(input_ids=batch).logits[:, -span:]
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # position D+j predicts D+j+1
        target = batch[:, -span + 1 :]
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        out.append(nll.mean(dim=1).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def long_copy_gain(
    model,
    token_stream,
    distances,
    span: int = SPAN,
    samples: int = SAMPLES,
    seed: int = 0,
    batch_size: int = 8,
) -> dict[int, dict]:
    """{D: {"gain", "nll_with", "nll_without", "gain_se"}} in nats/token (module docstring).

    gain_se is the standard error of the gain over the samples."""
    out = {}
    for d in distances:
        with_copy, without = copy_probe_inputs(token_stream, int(d), span, samples, seed)
        nll_with = span_nll(model, with_copy, span, batch_size)
        nll_without = span_nll(model, without, span, batch_size)
        gains = nll_without - nll_with
        se = float(gains.std(ddof=1) / math.sqrt(len(gains))) if len(gains) > 1 else float("nan")
        out[int(d)] = {
            "gain": float(gains.mean()),
            "nll_with": float(nll_with.mean()),
            "nll_without": float(nll_without.mean()),
            "gain_se": se,
        }
    return out


def max_positions(model_dir: str | Path) -> int:
    """The longest input the model's config allows (max_position_embeddings)."""
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        raise UserError(f"'{model_dir}' is not an HF model directory (no config.json)")
    return int(json.loads(config.read_text())["max_position_embeddings"])


def check_distances(distances, model_dir: str | Path, span: int = SPAN) -> None:
    """A probe at distance D feeds D + span tokens: refuse what the model cannot take."""
    limit = max_positions(model_dir)
    too_long = [d for d in distances if d + span > limit]
    if too_long:
        raise UserError(
            f"probe distance(s) {', '.join(map(str, too_long))} + span {span} exceed the "
            f"{limit} positions of '{model_dir}' (max_position_embeddings): "
            f"use distances <= {limit - span}"
        )


def heldout_token_lists(corpus_dir: str | Path, tokenizer) -> list[list[int]]:
    from pipelines.ingest import read_docs

    texts = read_docs(Path(corpus_dir), "heldout")["text"].to_pylist()
    if not texts:
        raise UserError(f"corpus '{corpus_dir}' has no held-out documents to probe with")
    return tokenizer(texts)["input_ids"]


def probe_model(
    model_dir: str | Path,
    corpus_dir: str | Path,
    distances,
    *,
    tokenizer_dir: str | Path | None = None,
    span: int = SPAN,
    samples: int = SAMPLES,
    seed: int = 0,
    heldout_context: int = 512,
    heldout_tokens: int = 40_000,
    batch_size: int = 8,
) -> dict:
    """Long-copy gains of one HF model on the corpus's held-out documents, plus its held-out
    perplexity at a short context (scored like pi_0's pretraining eval: base_model.mean_nll over
    the first heldout_tokens tokens packed into rows of heldout_context). JSON-able."""
    from transformers import AutoModelForCausalLM

    from pipelines.base_model import join_documents, mean_nll, pack
    from pipelines.tokenizer import load_tokenizer

    distances = sorted({int(d) for d in distances})
    check_distances(distances, model_dir, span)
    start = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer_dir or model_dir)
    docs = heldout_token_lists(corpus_dir, tokenizer)
    eos = tokenizer.eos_token_id
    stream = join_documents(docs, eos)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    gains = long_copy_gain(model, stream, distances, span, samples, seed, batch_size)
    blocks = pack(docs, eos, heldout_context)[: max(1, heldout_tokens // heldout_context)]
    nll = mean_nll(model, blocks, batch_size)
    log.info(
        "probe %s: gain %s nats/token, held-out ppl %.1f at %d tokens (%.1f s)",
        model_dir,
        {d: round(g["gain"], 3) for d, g in gains.items()},
        math.exp(nll),
        heldout_context,
        time.perf_counter() - start,
    )
    return {
        "model_dir": str(model_dir),
        "max_position_embeddings": model.config.max_position_embeddings,
        "distances": distances,
        "span": span,
        "samples": samples,
        "seed": seed,
        "heldout_stream_tokens": len(stream),
        "gain": {str(d): round(g["gain"], 4) for d, g in gains.items()},
        "gain_se": {str(d): round(g["gain_se"], 4) for d, g in gains.items()},
        "nll_with": {str(d): round(g["nll_with"], 4) for d, g in gains.items()},
        "nll_without": {str(d): round(g["nll_without"], 4) for d, g in gains.items()},
        "heldout_context": heldout_context,
        "heldout_tokens": int(blocks.numel()),
        "heldout_ppl": round(math.exp(nll), 3),
        "probe_s": round(time.perf_counter() - start, 2),
    }


def plot_gains(results: list[dict], path: Path, title: str = "long-copy probe") -> Path:
    """gain vs distance, one line per result (label: result["name"], else its model dir).
    Distances beyond a result's "trained_context" (D + span > it) get hollow markers."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for result in results:
        ds = [int(d) for d in result["gain"]]
        gs = [result["gain"][str(d)] for d in ds]
        label = result.get("name") or Path(result["model_dir"]).name
        (line,) = ax.plot(ds, gs, marker="o", label=label)
        trained = result.get("trained_context")
        if trained:
            beyond = [(d, g) for d, g in zip(ds, gs, strict=True) if d + result["span"] > trained]
            if beyond:
                ax.plot(*zip(*beyond, strict=True), "o", mfc="white", mec=line.get_color())
    ax.axhline(0.0, color="#999", lw=0.8)
    low, high = ax.get_ylim()
    ax.set_ylim(min(low, -0.5), max(high, 1.0))  # noise around 0 should look like 0
    ax.set_xscale("log", base=2)
    ticks = sorted({int(d) for result in results for d in result["gain"]})
    ax.set_xticks(ticks, [str(d) for d in ticks])
    ax.minorticks_off()
    xlabel = "distance D (tokens)"
    if any(r.get("trained_context") for r in results):
        xlabel += "; hollow: beyond the trained context"
    ax.set(title=title, xlabel=xlabel, ylabel="gain (nats/token)")
    if len(results) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
