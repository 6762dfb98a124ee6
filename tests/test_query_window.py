"""The retrieval query: EntropyLong's window centred on the anchor token (q_i = x_{t_i-w : t_i+w},
w = 16; EntropyLong, arXiv 2510.02330), on hand-made token arrays and through a tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.core.config import ConfigError, ScreenSection, config_from_dict
from pipelines.steps.screen import query_text, query_window, screen_doc

IDS = list(range(1000, 1100))  # token i of the document has id 1000 + i: a slice is readable


def _window(pos: int, before: int, after: int, ids: list[int] = IDS) -> list[int]:
    start, stop = query_window(len(ids), pos, before, after)
    return ids[start:stop]


def test_paper_default_is_16_either_side():
    s = ScreenSection()
    assert (s.query_before, s.query_after) == (16, 16)


def test_middle_of_document_is_centred_on_the_anchor():
    pos = 50
    assert query_window(len(IDS), pos, 16, 16) == (34, 67)
    got = _window(pos, 16, 16)
    assert len(got) == 16 + 1 + 16
    assert got[16] == IDS[pos]  # the anchor sits in the middle
    assert got == IDS[34:67]
    assert _window(pos, 3, 7) == IDS[47:58]  # asymmetric sizes


def test_anchor_near_the_start_is_clipped_before_only():
    got = _window(5, 16, 16)
    assert got == IDS[0:22]  # 5 tokens before (all there are), the anchor, 16 after
    assert IDS[5] in got
    assert _window(0, 16, 16) == IDS[0:17]  # anchor is the first token


def test_anchor_near_the_end_is_clipped_after_only():
    n = len(IDS)
    got = _window(n - 4, 16, 16)
    assert got == IDS[n - 20 : n]  # 16 before, the anchor, the 3 tokens that remain
    assert _window(n - 1, 16, 16) == IDS[n - 17 : n]  # anchor is the last token
    assert _window(3, 100, 100) == IDS  # a short document: the whole of it


def test_before_256_after_0_is_the_former_query_plus_the_anchor():
    # Former query: ids[max(0, pos - 256) : pos], the tokens right before the anchor.
    doc = list(range(2000))
    for pos in (1, 10, 255, 256, 257, 1000, 1999):
        start, stop = query_window(len(doc), pos, 256, 0)
        assert doc[start : stop - 1] == doc[max(0, pos - 256) : pos]
        assert stop - 1 == pos  # and the anchor itself, nothing after it


def test_zero_sizes_and_bad_positions():
    assert _window(40, 0, 0) == [IDS[40]]
    assert _window(40, 0, 2) == IDS[40:43]
    for pos in (-1, len(IDS)):
        with pytest.raises(ValueError, match="outside"):
            query_window(len(IDS), pos, 16, 16)
    with pytest.raises(ValueError, match=">= 0"):
        query_window(len(IDS), 10, -1, 16)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from pipelines.world.tokenizer import train_tokenizer

    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"
    return train_tokenizer([text] * 20, 300, 1, tmp_path_factory.mktemp("tok"))


def test_decoded_query_through_a_real_tokenizer(tokenizer):
    text = "O Romeo, Romeo, wherefore art thou Romeo? Deny thy father and refuse thy name."
    ids = tokenizer(text)["input_ids"]
    assert len(ids) > 12
    pos = len(ids) // 2
    q = query_text(tokenizer, ids, pos, 4, 3)
    assert q == tokenizer.decode(ids[pos - 4 : pos + 4])
    assert tokenizer.decode([ids[pos]]) in q and q in text
    assert query_text(tokenizer, ids, pos, 1000, 1000) == text


def test_screen_doc_uses_the_configured_window(tokenizer):
    text = "O Romeo, Romeo, wherefore art thou Romeo? Deny thy father and refuse thy name."
    ids = tokenizer(text)["input_ids"]
    entropy = np.full(len(ids), 1.0, dtype=np.float32)
    entropy[0] = np.nan
    anchor = len(ids) - 5
    entropy[anchor] = 9.0
    cfg = config_from_dict(
        {"screen": {"min_context": 0, "query_before": 2, "query_after": 1, "max_positions": 1}}
    )
    row = screen_doc("d", ids, entropy, tokenizer, cfg.screen)
    assert row.positions == [anchor]
    assert row.queries == [tokenizer.decode(ids[anchor - 2 : anchor + 2])]


@pytest.mark.parametrize(
    "data, key, allowed",
    [
        ({"screen": {"query_before": -1}}, "screen.query_before", "allowed [0, inf]"),
        ({"screen": {"query_after": -3}}, "screen.query_after", "allowed [0, inf]"),
        ({"screen": {"query_after": "16"}}, "screen.query_after", "an integer"),
        ({"screen": {"query_tokens": 256}}, "screen.query_tokens", "allowed keys are"),
        (
            {"screen": {"query_before": 0, "query_after": 0}},
            "screen.query_before",
            "+ screen.query_after must be >= 1",
        ),
    ],
)
def test_bad_query_config_is_one_line_naming_the_key(data, key, allowed):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    message = str(err.value)
    assert f"'{key}'" in message and allowed in message
    assert "\n" not in message
