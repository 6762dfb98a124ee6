"""Step 4 for EntropyLong: S = [C_pi(1); C_pi(2); ...; C_pi(m); D] (EntropyLong, arXiv
2510.02330, its step 4 "strategic concatenation"; METHOD_NOTES §2.4): a seed document's
verified contexts in a random order, then the document. No hard negatives (PolicyLong's
addition) and no random filler.

The paper does not say how a unit reaches the training length when its contexts are short
(ours are 128-token chunks; its are document chunks retrieved from >1B documents). Our choice,
the usual packing of pretraining data: the units of a batch's documents, in seed order, are
appended to one another (each piece followed by EOS) and a sample is cut as soon as they reach
seq_len, keeping the **last** seq_len tokens, so the newest unit is whole and the first one
loses its beginning (its earliest contexts first). Units left over at the end of a batch that
do not fill a sample are dropped and counted; a batch is committed as a whole, so packing
within it keeps the sample log's commit-per-batch resume exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.steps.assemble import Piece, Sample, SampleBuilder, make_sample_id


@dataclass
class Unit:
    doc_id: str
    doc_ids: list[int]  # the stage's document window
    positives: list[Piece]


@dataclass
class Packed:
    samples: list[Sample]
    units_dropped: int  # units at the end of the batch too few to fill a sample


def _unit_pieces(unit: Unit, budget: int, rng: np.random.Generator) -> list[Piece]:
    """The unit's contexts, strongest first while they fit in `budget` tokens, then shuffled
    (EntropyLong's shuffle beats a fixed order), and the document last."""
    kept, used = [], 0
    for p in sorted(unit.positives, key=lambda p: -p.r):
        if used + len(p.input_ids) + 1 <= budget:
            kept.append(p)
            used += len(p.input_ids) + 1
    rng.shuffle(kept)
    return [*kept, Piece(unit.doc_id, unit.doc_ids, "document", doc_id=unit.doc_id)]


def pack_units(stage: int, units: list[Unit], seq_len: int, eos_id: int, seed: int) -> Packed:
    """The batch's samples, each exactly seq_len tokens (see the module docstring)."""
    rng = np.random.default_rng(seed)
    samples: list[Sample] = []
    pending: list[tuple[Piece, list[int]]] = []  # (piece, its ids with EOS) not yet in a sample
    pending_units: list[str] = []
    for unit in units:
        if len(unit.doc_ids) + 1 > seq_len:
            raise ValueError(f"document {unit.doc_id}: {len(unit.doc_ids)} tokens >= {seq_len}")
        for piece in _unit_pieces(unit, seq_len - len(unit.doc_ids) - 1, rng):
            pending.append((piece, [*piece.input_ids, eos_id]))
        pending_units.append(unit.doc_id)
        if sum(len(ids) for _, ids in pending) >= seq_len:
            samples.append(_cut(stage, pending, pending_units, seq_len))
            pending, pending_units = [], []
    return Packed(samples, len(pending_units))


def _cut(stage: int, pending, unit_ids: list[str], seq_len: int) -> Sample:
    """The last seq_len tokens of the pending pieces: leading pieces dropped or cut from the
    start (a cut piece's segment records how many of its tokens are gone as `offset`)."""
    over = sum(len(ids) for _, ids in pending) - seq_len
    out = SampleBuilder()
    for piece, ids in pending:
        if over >= len(ids):
            over -= len(ids)
            continue
        out.place(piece, ids[over:], offset=over)
        over = 0
    assert len(out) == seq_len, (len(out), seq_len)
    return Sample(make_sample_id(stage, unit_ids, seq_len), unit_ids[-1], out.ids, out.segments)
