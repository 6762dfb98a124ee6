"""One measurement of whether a base policy copies from its context, shared by the suite's world
fixture (tests/conftest.py) and the shipped-base test: the long-copy gain at D = 256 on held-out
text packed as pi_0's pretraining evaluates it (pipelines/world/shipped_base.py's metrics)."""

from __future__ import annotations

# The test world's pi_0 must copy at the distances its samples span (stage 0: 512 tokens), or
# verification at tau_pos 0.1 finds nothing and every pipeline test runs on an empty stage. The
# shipped base measures 3.89 +- 0.15 nats/token at D = 256 (12 held-out samples;
# base_metrics.json); a base that does not copy measures ~0 (README: the recipe with text first,
# -0.01).
BASE_COPY_GAIN_MIN = 2.0
DISTANCE = 256


def heldout_blocks(cfg, corpus_dir, model_dir):
    """The held-out split packed into pretrain.seq_len rows, pretrain.eval_tokens of them."""
    from pipelines.world import base_model
    from pipelines.world.ingest import read_docs
    from pipelines.world.tokenizer import load_tokenizer

    tok, p = load_tokenizer(model_dir), cfg.pretrain
    texts = read_docs(corpus_dir, "heldout")["text"].to_pylist()
    blocks = base_model.pack(tok(texts)["input_ids"], tok.eos_token_id, p.seq_len)
    return blocks[: max(1, p.eval_tokens // p.seq_len)]


def heldout_copy_gain(model, blocks) -> dict:
    """long_copy_gain at DISTANCE over the held-out blocks, 12 samples: {"gain": .., ...}."""
    from pipelines.core.long_copy import long_copy_gain

    return long_copy_gain(model, blocks.flatten().tolist(), [DISTANCE], samples=12)[DISTANCE]
