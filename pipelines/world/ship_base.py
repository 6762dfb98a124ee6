"""`python -m pipelines.world.ship_base`: ship the profile's cached pi_0 into the repository's
assets
(pipelines/world/shipped_base.py says what shipping is). Kept apart from shipped_base, which
pipelines/world/world.py imports, because shipping needs the world (corpus, cache key)."""

from __future__ import annotations

import argparse
import json
import logging

from pipelines.world.shipped_base import ASSETS, ship


def main() -> None:
    p = argparse.ArgumentParser(description="ship the profile's cached pi_0 (see the docstring)")
    p.add_argument("--config", default="configs/tiny.yaml")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO)
    from cluster.runtime import init_ray
    from pipelines.core.config import load_config
    from pipelines.world.ingest import read_docs
    from pipelines.world.tokenizer import load_tokenizer
    from pipelines.world.world import base_dir, base_model, ensure_corpus

    cfg = load_config(args.config)
    init_ray(cfg.cluster)
    corpus_dir = ensure_corpus(cfg)
    model_dir = base_dir(cfg, corpus_dir)
    if not (model_dir / "base_metrics.json").is_file():
        raise SystemExit(f"no built base at {model_dir}: run `policylong prepare-base --rebuild`")
    tok, pt = load_tokenizer(model_dir), cfg.pretrain
    texts = read_docs(corpus_dir, "heldout")["text"].to_pylist()
    blocks = base_model.pack(tok(texts)["input_ids"], tok.eos_token_id, pt.seq_len)
    blocks = blocks[: max(1, pt.eval_tokens // pt.seq_len)]
    metrics = ship(model_dir, blocks, pt.batch_size, ASSETS / model_dir.name)
    print(json.dumps({"shipped": str(ASSETS / model_dir.name), **metrics["shipped"]}))


if __name__ == "__main__":
    main()
