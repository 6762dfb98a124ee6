"""Step 4 — assemble: one training sequence of exactly seq_len tokens per seed document
(PolicyLong's and plain concatenation's layout; EntropyLong's and NExtLong's are in
assemble_entropylong.py and assemble_nextlong.py).

Layout (left to right), segments separated by EOS:

    [filler | positive | filler | positive ...]  early region: verified dependencies, far back
    [filler | negative | filler | negative ...]  late region: on-policy hard negatives
    [seed document]                                last, so its tokens must reach back for evidence

Positives are spread over the first `positive_region` share of the prefix, hard negatives over the
rest, random filler chunks fill the gaps, and the last filler is cut so the total is exact. The
same inputs and seed always give the same sample.

The document is the stage's document window (`document_window`): exactly the tokens screening
scored, so every anchor a positive was verified for is in the sample, at the place it was scored.

Filler chunks come from the retrieval shards (FillerPool): the driver holds only the shards'
sizes, never the chunk table (10^9 chunks at the paper's scale); each shard samples from its own
part, the shards weighted by size, so every chunk of the index is equally likely.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipelines.core.config import AssembleSection


@dataclass
class Piece:
    chunk_id: str
    input_ids: list[int]
    role: str  # positive | negative | filler | document | meta_chunk
    r: float = float("nan")
    similarity: float = float("nan")
    doc_id: str = ""  # the seed document it serves (its own id for a document piece)
    anchors: list[int] = field(default_factory=list)  # document positions it was verified at


@dataclass
class Sample:
    sample_id: str
    seed_doc_id: str
    input_ids: list[int]
    segments: list[dict] = field(default_factory=list)


def document_window(seq_len: int, max_doc_tokens: int) -> int:
    """How many of a seed document's first tokens a stage screens and its samples hold.

    The document's beginning (not its end): the entropy screening computes at position t is
    H(x_t | d_<t) with d starting at the document's start, and the sample holds the same d_<t
    right before x_t. The document never takes more than half the window, so the other half is
    left for the contexts that resolve it."""
    return min(max_doc_tokens, seq_len // 2)


def make_sample_id(stage: int, doc_ids: list[str], seq_len: int) -> str:
    key = f"{stage}:{','.join(doc_ids)}:{seq_len}"
    return hashlib.sha256(key.encode()).hexdigest()[:20]


class SampleBuilder:
    """Token ids and their segments (provenance: role, place, what each piece serves)."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.segments: list[dict] = []

    def __len__(self) -> int:
        return len(self.ids)

    def place(self, piece: Piece, ids: list[int], offset: int = 0) -> None:
        """Append `ids` (piece.input_ids from `offset` on, maybe with a separator or cut)."""
        self.segments.append(
            {
                "chunk_id": piece.chunk_id,
                "role": piece.role,
                "start": len(self.ids),
                "length": len(ids),
                "r": piece.r,
                "similarity": piece.similarity,
                "doc_id": piece.doc_id,
                "anchors": list(piece.anchors),
                "offset": offset,
            }
        )
        self.ids.extend(ids)


def anchors_kept(segments: list[dict]) -> tuple[int, int]:
    """(anchors of the sample's positives, those whose document token is in the sample)."""
    docs = {s["doc_id"]: s for s in segments if s["role"] == "document"}
    total = kept = 0
    for s in segments:
        if s["role"] != "positive":
            continue
        doc = docs.get(s["doc_id"])
        for a in s["anchors"]:
            total += 1
            kept += bool(doc) and doc["offset"] <= a < doc["offset"] + doc["length"]
    return total, kept


FillerSource = Callable[[np.random.Generator, int], Piece]  # (rng, tokens wanted) -> a chunk


class FillerPool:
    """Random retrieval chunks used as filler (never from the seed document), sampled by the
    retrieval shards (actors/retrieval_shard.py `sample_fillers`).

    A sample's sampler fetches `batch` chunks per round trip: the sample's rng picks which shard
    each comes from (probability = the shard's share of all chunks) and one seed per shard, each
    shard draws its count of rows from its own part with its seed, and the chunks are used in
    the order drawn. So a sample's fillers depend only on its seed and the index.
    """

    def __init__(self, shards: list, sizes: list[int], batch: int):
        if len(shards) != len(sizes) or sum(sizes) == 0:
            raise ValueError(f"{len(shards)} shards with sizes {sizes}: nothing to fill with")
        self.shards, self.sizes, self.batch = list(shards), list(sizes), batch

    def sampler(self, seed_doc_id: str) -> FillerSource:
        import ray

        sizes = np.array(self.sizes, dtype=np.float64)  # this document's: its own shards drop
        ready: list[tuple[str, list[int]]] = []

        def fetch(rng: np.random.Generator) -> None:
            if not sizes.any():
                raise ValueError(f"the index holds no chunk of another document than {seed_doc_id}")
            which = rng.choice(len(sizes), size=self.batch, p=sizes / sizes.sum())
            seeds = rng.integers(2**63, size=len(sizes))
            counts = np.bincount(which, minlength=len(sizes))
            asked = [s for s in range(len(sizes)) if counts[s]]
            replies = ray.get(
                [
                    self.shards[s].sample_fillers.remote(int(counts[s]), int(seeds[s]), seed_doc_id)
                    for s in asked
                ]
            )
            got = {s: iter(rows) for s, rows in zip(asked, replies, strict=True)}
            for s, rows in zip(asked, replies, strict=True):
                if len(rows) < counts[s]:  # that shard holds only the seed document's chunks
                    sizes[s] = 0
            ready.extend(row for s in which if (row := next(got[s], None)) is not None)
            ready.reverse()  # popped from the end: first drawn, first used

        def draw(rng: np.random.Generator, want: int) -> Piece:
            while not ready:
                fetch(rng)
            chunk_id, input_ids = ready.pop()
            return Piece(chunk_id, input_ids, "filler")

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
    doc = list(doc_ids)
    if len(doc) > seq_len // 2:  # construction passes the stage's document window
        raise ValueError(f"document {seed_doc_id}: {len(doc)} tokens > half of seq_len {seq_len}")
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

    out = SampleBuilder()
    for target, piece in plan:
        remaining_fixed -= len(piece.input_ids) + 1
        # Fill up to the target, never so far that the planned pieces no longer fit.
        limit = min(target, budget - remaining_fixed - len(piece.input_ids) - 1)
        _fill(out, filler, rng, limit, eos_id)
        out.place(piece, [*piece.input_ids, eos_id])
    _fill(out, filler, rng, budget, eos_id)
    out.place(Piece(seed_doc_id, doc, "document", doc_id=seed_doc_id), doc)
    assert len(out) == seq_len, (len(out), seq_len)
    return Sample(make_sample_id(stage, [seed_doc_id], seq_len), seed_doc_id, out.ids, out.segments)


def _fill(out: SampleBuilder, filler: FillerSource, rng, until: int, eos_id: int) -> None:
    """Append random filler chunks until `out` reaches `until` tokens (last one cut to fit)."""
    while len(out) < until:
        want = until - len(out)
        piece = filler(rng, want)
        if not piece.input_ids:
            raise ValueError(f"filler chunk '{piece.chunk_id}' is empty")
        out.place(piece, [*piece.input_ids, eos_id][:want])
