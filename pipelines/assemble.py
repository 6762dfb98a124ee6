"""Step 4 — assemble: one training sequence of exactly seq_len tokens per seed document.

Layout (left to right), segments separated by EOS:

    [filler | positive | filler | positive ...]  early region: verified dependencies, far back
    [filler | negative | filler | negative ...]  late region: on-policy hard negatives
    [seed document]                                last, so its tokens must reach back for evidence

Positives are spread over the first `positive_region` share of the prefix, hard negatives over the
rest, random filler chunks fill the gaps, and the last filler is cut so the total is exact. The
same inputs and seed always give the same sample.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipelines.chunking import read_chunk_table
from pipelines.config import AssembleSection


@dataclass
class Piece:
    chunk_id: str
    input_ids: list[int]
    role: str  # positive | negative | filler | document
    r: float = float("nan")
    similarity: float = float("nan")


@dataclass
class Sample:
    sample_id: str
    seed_doc_id: str
    input_ids: list[int]
    segments: list[dict] = field(default_factory=list)


FillerSource = Callable[[np.random.Generator, int], Piece]  # (rng, tokens wanted) -> a chunk


class FillerPool:
    """Random retrieval chunks used as filler (never from the seed document)."""

    def __init__(self, index_dir, chunk_tables: list[str]):
        cols = ["chunk_id", "doc_id", "input_ids"]
        table = pa.concat_tables(read_chunk_table(index_dir / t, cols) for t in chunk_tables)
        self.ids = table["chunk_id"].to_pylist()
        self.docs = table["doc_id"].to_pylist()
        self.tokens = table["input_ids"].to_pylist()

    def sampler(self, seed_doc_id: str):
        def draw(rng: np.random.Generator, want: int) -> Piece:
            while True:
                i = int(rng.integers(len(self.ids)))
                if self.docs[i] != seed_doc_id:
                    return Piece(self.ids[i], self.tokens[i], "filler")

        return draw


def _targets(count: int, lo: int, hi: int) -> list[int]:
    """Evenly spread start offsets for `count` pieces inside [lo, hi)."""
    if count == 0:
        return []
    step = (hi - lo) / count
    return [int(lo + i * step) for i in range(count)]


def assemble_sample(
    stage: int,
    seed_doc_id: str,
    doc_ids: list[int],
    positives: list[Piece],
    negatives: list[Piece],
    filler: FillerSource,
    seq_len: int,
    eos_id: int,
    cfg: AssembleSection,
    seed: int,
) -> Sample:
    rng = np.random.default_rng(seed)
    doc = doc_ids[-(seq_len // 2) :]  # the document never takes more than half the window
    budget = seq_len - len(doc)  # prefix tokens, EOS separators included
    positives = sorted(positives, key=lambda p: -p.r)
    negatives = list(negatives[: cfg.max_negatives])
    # Drop what cannot fit: negatives first, then the weakest positives.
    while negatives and sum(len(p.input_ids) + 1 for p in positives + negatives) > budget:
        negatives.pop()
    while positives and sum(len(p.input_ids) + 1 for p in positives) > budget:
        positives.pop()
    if cfg.shuffle_positives:
        rng.shuffle(positives)  # no fixed-position shortcut (EntropyLong's shuffle ablation)
    split = int(budget * cfg.positive_region)
    plan = list(zip(_targets(len(positives), 0, split), positives, strict=True))
    neg_lo = max(split, sum(len(p.input_ids) + 1 for p in positives))
    plan += list(zip(_targets(len(negatives), neg_lo, budget), negatives, strict=True))
    remaining_fixed = sum(len(p.input_ids) + 1 for _, p in plan)

    out: list[int] = []
    segments: list[dict] = []

    def place(piece: Piece, ids: list[int]) -> None:
        segments.append(
            {
                "chunk_id": piece.chunk_id,
                "role": piece.role,
                "start": len(out),
                "length": len(ids),
                "r": piece.r,
                "similarity": piece.similarity,
            }
        )
        out.extend(ids)

    for target, piece in plan:
        remaining_fixed -= len(piece.input_ids) + 1
        # Fill up to the target, never so far that the planned pieces no longer fit.
        limit = min(target, budget - remaining_fixed - len(piece.input_ids) - 1)
        _fill(out, place, filler, rng, limit, eos_id)
        place(piece, [*piece.input_ids, eos_id])
    _fill(out, place, filler, rng, budget, eos_id)
    place(Piece(seed_doc_id, doc, "document"), doc)
    assert len(out) == seq_len, (len(out), seq_len)
    digest = hashlib.sha256(f"{stage}:{seed_doc_id}:{seq_len}".encode()).hexdigest()[:20]
    return Sample(digest, seed_doc_id, out, segments)


def _fill(out, place, filler: FillerSource, rng, until: int, eos_id: int) -> None:
    """Append random filler chunks until `out` reaches `until` tokens (last one cut to fit)."""
    while len(out) < until:
        want = until - len(out)
        piece = filler(rng, want)
        if not piece.input_ids:
            raise ValueError(f"filler chunk '{piece.chunk_id}' is empty")
        ids = [*piece.input_ids, eos_id][:want]
        place(piece, ids)
