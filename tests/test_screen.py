"""Position selection and query windows on hand-made arrays; the screening pipeline end to end."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipelines.steps.screen import entropy_threshold, query_text, select_positions


def _flat(n: int, value: float = 1.0) -> np.ndarray:
    e = np.full(n, value, dtype=np.float32)
    e[0] = np.nan  # nothing predicts the first token
    return e


def test_threshold_uses_valid_entropies_only():
    e = np.array([np.nan, 1.0, 3.0], dtype=np.float32)
    mu, sigma, thr = entropy_threshold(e, alpha=2.0)
    assert mu == pytest.approx(2.0) and sigma == pytest.approx(1.0) and thr == pytest.approx(4.0)


def test_only_positions_above_threshold():
    e = _flat(200)
    e[50], e[120] = 9.0, 1.05  # 1.05 is barely above the mean: below mu + alpha*sigma
    assert select_positions(e, alpha=2.0, max_positions=4, min_gap=1, min_context=0) == [50]
    # alpha = 0: anything strictly above the mean qualifies
    assert select_positions(e, alpha=0.0, max_positions=4, min_gap=1, min_context=0) == [50, 120]


def test_cap_keeps_the_highest():
    e = _flat(400)
    for pos, h in [(40, 5.0), (100, 9.0), (200, 7.0), (300, 8.0), (380, 6.0)]:
        e[pos] = h
    got = select_positions(e, alpha=0.5, max_positions=3, min_gap=10, min_context=0)
    assert got == [100, 200, 300]  # sorted by position, the three highest entropies


def test_gap_is_respected_greedily():
    e = _flat(300)
    e[100], e[110], e[130], e[200] = 9.0, 8.5, 8.0, 7.0
    got = select_positions(e, alpha=0.5, max_positions=4, min_gap=25, min_context=0)
    assert got == [100, 130, 200]  # 110 is within 25 of 100 (higher), 130 is not
    assert all(b - a >= 25 for a, b in zip(got, got[1:], strict=False))


def test_min_context_skips_early_positions():
    e = _flat(300)
    e[5], e[31], e[32], e[250] = 9.5, 9.0, 8.0, 7.0
    got = select_positions(e, alpha=0.5, max_positions=4, min_gap=1, min_context=32)
    assert got == [32, 250]


def test_degenerate_documents_give_nothing():
    assert select_positions(_flat(50), 2.0, 4, 8, 0) == []  # sigma = 0: nothing is above
    assert select_positions(np.array([np.nan]), 2.0, 4, 8, 0) == []
    assert select_positions(np.array([], dtype=np.float32), 2.0, 4, 8, 0) == []


def test_query_is_the_window_around_the_anchor(tiny_world):
    from pipelines.world.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_world.model_dir)
    text = "HAMLET. To be, or not to be, that is the question: whether 'tis nobler in the mind"
    ids = tok(text)["input_ids"]
    pos = len(ids) - 6
    q = query_text(tok, ids, pos, before=5, after=2)
    assert q == tok.decode(ids[pos - 5 : pos + 3])  # 5 before, the anchor ids[pos], 2 after
    assert q in text
    assert query_text(tok, ids, 3, before=100, after=100) == tok.decode(ids)  # clipped both ends


@pytest.mark.slow
def test_screen_documents_writes_parquet(tiny_world, test_config, ray_local, tmp_path):
    import pyarrow.parquet as pq

    from pipelines.driver.workers import create_scorers
    from pipelines.steps.screen import screen_documents
    from pipelines.world.ingest import read_docs
    from pipelines.world.tokenizer import load_tokenizer

    cfg = dataclasses.replace(
        test_config,
        screen=dataclasses.replace(test_config.screen, backend="hf", batch_docs=3),
    )
    docs = read_docs(tiny_world.corpus_dir, "train").slice(0, 8).select(["doc_id", "text"])
    scorers = create_scorers(cfg, tiny_world.model_dir, num=2)
    out = tmp_path / "screen.parquet"
    tokenizer = load_tokenizer(tiny_world.model_dir)
    table = screen_documents(cfg.screen, tokenizer, docs, scorers, out)
    assert pq.read_table(out).equals(table)
    assert table["doc_id"].to_pylist() == docs["doc_id"].to_pylist()  # input order kept
    s = cfg.screen
    for row in table.to_pylist():
        assert 2 <= row["n_tokens"] <= s.max_doc_tokens
        pos = row["positions"]
        assert pos == sorted(pos) and len(pos) <= s.max_positions
        assert all(p >= s.min_context for p in pos)
        assert all(b - a >= s.min_gap for a, b in zip(pos, pos[1:], strict=False))
        assert all(h > row["threshold"] for h in row["position_entropies"])
        assert len(row["queries"]) == len(pos) and all(row["queries"])
        assert row["policy_version"] == 0
    assert sum(len(p) for p in table["positions"].to_pylist()) > 0
    for actor in scorers:
        ray_local.kill(actor)
