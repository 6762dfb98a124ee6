"""Step 4 for NExtLong (arXiv 2501.12766, §3.1, Algorithm 1, App. D.1; METHOD_NOTES §3.1):
no model in the loop. The seed document is split into meta-chunks, each meta-chunk is followed
by its top-k most similar chunks of other documents (hard negatives), and the result

    t = [m_1, n_11 .. n_1k, m_2, n_21 .. n_2k, ..., m_p, n_p1 .. n_pk]

is cut to the training length; a shorter one is dropped (Algorithm 1, line 34).

- Meta-chunks: the document split at newlines into lines, concatenated in order until adding
  the next line would pass `s` characters (NExtLong's `chunking.py` measures characters; a line
  longer than s is a meta-chunk of its own: the paper is silent). They are token spans of the
  stage's document window, so every method's samples hold the same document tokens.
- k = ceil((T·E·w − S) / (p·s)) (App. D.1, Eq. 8-12): T the target length in tokens, E the
  document's characters per token, w = 1.5, S its characters, p its meta-chunks; at least 1.
  NExtLong chunks its retrieval corpus with the same s; our index chunks are
  `index.chunk_tokens` tokens, so the profile sets s near their length in characters.
- No negative is used twice in a sample (App. D.1); none comes from the seed document (the
  retriever excludes it). Pieces are joined without separators: NExtLong builds one text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipelines.steps.assemble import Piece, Sample, SampleBuilder, make_sample_id

W = 1.5  # NExtLong's overshoot factor: the synthesised text is made longer, then cut


@dataclass
class MetaChunk:
    start: int  # token span [start, stop) of the document window
    stop: int
    text: str


def meta_chunks(token_texts: list[str], max_chars: int) -> list[MetaChunk]:
    """Lines (a line ends after a token holding a newline) grouped into meta-chunks of at most
    max_chars characters, in order."""
    lines, start = [], 0
    for i, text in enumerate(token_texts):
        if "\n" in text or i == len(token_texts) - 1:
            lines.append((start, i + 1, "".join(token_texts[start : i + 1])))
            start = i + 1
    out: list[MetaChunk] = []
    for lo, hi, text in lines:
        if out and len(out[-1].text) + len(text) <= max_chars:
            out[-1] = MetaChunk(out[-1].start, hi, out[-1].text + text)
        else:
            out.append(MetaChunk(lo, hi, text))
    return out


def negatives_per_meta_chunk(seq_len: int, doc_chars: int, doc_tokens: int, p: int, s: int) -> int:
    """k = ceil((T·E·w − S) / (p·s)), at least 1 (module docstring)."""
    chars_per_token = doc_chars / max(1, doc_tokens)
    return max(1, math.ceil((seq_len * chars_per_token * W - doc_chars) / (max(1, p) * s)))


def pick_negatives(hits_per_meta: list[list[Piece]], k: int) -> list[list[Piece]]:
    """Each meta-chunk's k most similar chunks (hits come most similar first), none reused."""
    used: set[str] = set()
    out = []
    for hits in hits_per_meta:
        chosen = [h for h in hits if h.chunk_id not in used][:k]
        used.update(h.chunk_id for h in chosen)
        out.append(chosen)
    return out


def interleave(
    stage: int,
    doc_id: str,
    doc_ids: list[int],
    metas: list[MetaChunk],
    negatives: list[list[Piece]],
    seq_len: int,
) -> Sample | None:
    """t = [m_1, n_1.., m_2, n_2.., ...] cut to seq_len; None when shorter (dropped)."""
    out = SampleBuilder()
    for meta, negs in zip(metas, negatives, strict=True):
        piece = Piece(doc_id, doc_ids[meta.start : meta.stop], "meta_chunk", doc_id=doc_id)
        for p in [piece, *negs]:
            room = seq_len - len(out)
            if room <= 0:
                break
            offset = meta.start if p is piece else 0
            out.place(p, p.input_ids[:room], offset=offset)
    if len(out) < seq_len:
        return None
    return Sample(make_sample_id(stage, [doc_id], seq_len), doc_id, out.ids, out.segments)
