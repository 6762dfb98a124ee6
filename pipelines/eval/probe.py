"""The long-copy probe of a checkpoint: gain(D) at several distances plus held-out perplexity,
written as probe.json and a PNG. What the gain is, and why it measures whether a model reads its
context, is in pipelines/core/long_copy.py.
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
import torch  # noqa: E402

from pipelines.core.errors import UserError  # noqa: E402
from pipelines.core.long_copy import SAMPLES, SPAN, long_copy_gain  # noqa: E402
from pipelines.world.tokenizer import document_separator_id

log = logging.getLogger(__name__)


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
    from pipelines.world.ingest import read_docs

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

    from pipelines.world.base_model import join_documents, mean_nll, pack
    from pipelines.world.tokenizer import load_tokenizer

    distances = sorted({int(d) for d in distances})
    check_distances(distances, model_dir, span)
    start = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer_dir or model_dir)
    docs = heldout_token_lists(corpus_dir, tokenizer)
    eos = document_separator_id(tokenizer)
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
