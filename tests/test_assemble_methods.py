"""The baselines' layouts as their papers describe them: EntropyLong's [C_pi(1..m); D] units
packed to seq_len with no negative and no filler (pipelines/steps/assemble_entropylong.py),
NExtLong's
meta-chunks each followed by their own unreused nearest chunks
(pipelines/steps/assemble_nextlong.py)."""

from __future__ import annotations

import pytest

from pipelines.steps.assemble import Piece, anchors_kept
from pipelines.steps.assemble_entropylong import Unit, pack_units
from pipelines.steps.assemble_nextlong import (
    MetaChunk,
    interleave,
    meta_chunks,
    negatives_per_meta_chunk,
    pick_negatives,
)

pytestmark = pytest.mark.timeout(60)
EOS = 0


def _unit(i: int, doc_len: int = 200, n_pos: int = 3) -> Unit:
    doc_id = f"d{i}"
    pos = [
        Piece(f"c{i}.{j}", [1000 * i + j] * 60, "positive", r=0.5 + j / 10, doc_id=doc_id,
              anchors=[5 + j])
        for j in range(n_pos)
    ]  # fmt: skip
    return Unit(doc_id, list(range(10_000 * i, 10_000 * i + doc_len)), pos)


def test_entropylong_samples_are_contexts_then_their_document_with_no_negative_or_filler():
    packed = pack_units(0, [_unit(i) for i in range(1, 7)], 1024, EOS, seed=3)
    # one unit: 3 x 61 + 201 = 384 tokens; three reach 1024, so 6 units make 2 samples
    assert len(packed.samples) == 2 and packed.units_dropped == 0
    for s in packed.samples:
        assert len(s.input_ids) == 1024
        roles = [seg["role"] for seg in s.segments]
        assert set(roles) <= {"positive", "document"}  # no negative, no filler
        assert roles[-1] == "document" and s.input_ids[-1] == EOS
        ends = [seg["start"] + seg["length"] for seg in s.segments]
        assert [seg["start"] for seg in s.segments[1:]] == ends[:-1] and ends[-1] == 1024
        for seg in s.segments:  # each positive sits before its own document
            if seg["role"] == "positive":
                doc = next(x for x in s.segments if x["chunk_id"] == seg["doc_id"])
                assert seg["start"] < doc["start"]
        total, kept = anchors_kept(s.segments)
        assert total and kept == total
    # the first unit of a sample lost its beginning, the newest is whole
    first = packed.samples[0].segments[0]
    assert first["offset"] > 0


def test_entropylong_shuffles_contexts_and_drops_the_units_left_over():
    orders = {
        tuple(seg["chunk_id"] for seg in pack_units(0, [_unit(1)] * 3, 1024, EOS, seed).samples[0]
              .segments if seg["role"] == "positive")
        for seed in range(8)
    }  # fmt: skip
    assert len(orders) > 1  # the order of contexts varies with the seed
    packed = pack_units(0, [_unit(i) for i in range(1, 5)], 1024, EOS, seed=0)
    assert len(packed.samples) == 1 and packed.units_dropped == 1
    with pytest.raises(ValueError, match="tokens >= 512"):
        pack_units(0, [_unit(1, doc_len=600)], 512, EOS, seed=0)


def test_meta_chunks_group_lines_up_to_s_characters():
    lines = ["ab\n", "cd", "e\n", "fgh\n", "x" * 30 + "\n", "ij"]
    metas = meta_chunks(lines, max_chars=8)
    assert [m.text for m in metas] == ["ab\ncde\n", "fgh\n", "x" * 30 + "\n", "ij"]
    assert [(m.start, m.stop) for m in metas] == [(0, 3), (3, 4), (4, 5), (5, 6)]


def test_k_follows_nextlongs_formula():
    # T = 1024 tokens, E = 4 chars/token, w = 1.5: 6144 chars; S = 2000, p = 4, s = 512
    assert negatives_per_meta_chunk(1024, 2000, 500, 4, 512) == 3  # ceil(4144 / 2048)
    assert negatives_per_meta_chunk(256, 2000, 500, 4, 512) == 1  # never below 1


def test_nextlong_alternates_meta_chunks_and_their_own_unreused_negatives():
    doc = list(range(100, 400))
    metas = [MetaChunk(0, 100, "m1"), MetaChunk(100, 200, "m2"), MetaChunk(200, 300, "m3")]
    hits = [
        [Piece(f"n{j}", [j] * 40, "negative", doc_id="d") for j in ids]
        for ids in ([1, 2, 3], [2, 3, 4, 5], [1, 5, 6, 7])
    ]
    negatives = pick_negatives(hits, k=2)
    assert [[p.chunk_id for p in n] for n in negatives] == [
        ["n1", "n2"],
        ["n3", "n4"],
        ["n5", "n6"],
    ]
    s = interleave(0, "d", doc, metas, negatives, seq_len=512)
    roles = [seg["role"] for seg in s.segments]
    assert roles == ["meta_chunk", "negative", "negative"] * 3
    assert len(s.input_ids) == 512  # 3 x (100 + 80) = 540, cut to 512
    used = [seg["chunk_id"] for seg in s.segments if seg["role"] == "negative"]
    assert len(used) == len(set(used))  # no negative reused
    metas_in = [seg for seg in s.segments if seg["role"] == "meta_chunk"]
    assert [seg["offset"] for seg in metas_in] == [0, 100, 200]  # document spans, in order
    assert s.input_ids[180:280] == doc[100:200]
    assert interleave(0, "d", doc, metas, negatives, seq_len=600) is None  # too short: dropped
