"""One stage's data construction: screen -> retrieve -> verify -> assemble -> commit.

Seed documents flow through in small batches, several batches in flight at once (one driver
thread each), so screening of one batch overlaps retrieval and verification of the others and
committed samples reach the trainer while later batches are still being built. The method
decides which steps run:

    policylong / entropylong   screen, retrieve, verify; positives + on-policy hard negatives
    nextlong                   retrieve by the document's own chunks, no verification: negatives
    concat                     random filler only (plain concatenation)

(PolicyLong and EntropyLong differ only in which policy the actors hold: the driver broadcasts
pi_{k+1} for PolicyLong and keeps pi_0 for EntropyLong.)
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from tqdm import tqdm

from pipelines.assemble import Piece, assemble_sample
from pipelines.chunking import read_chunk_table
from pipelines.config import Config
from pipelines.errors import StepFailed, describe, in_step
from pipelines.sample_log import SAMPLE_SCHEMA, SampleLog, shard_name
from pipelines.screen import screen_row

log = logging.getLogger(__name__)
CANDIDATE_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("chunk_id", pa.string()),
        ("r", pa.float32()),
        ("similarity", pa.float32()),
        ("label", pa.string()),
        ("positions", pa.list_(pa.int32())),
        # positives only (else ""): what a reader needs to judge the dependency is real
        ("anchor_text", pa.string()),
        ("chunk_text", pa.string()),
    ]
)
EXAMPLE_CONTEXT_TOKENS = 24  # document tokens shown before the anchor in a positive's example


@dataclass
class StageCounts:
    documents: int = 0
    positions: int = 0
    candidates: int = 0
    positives: int = 0
    negatives: int = 0
    samples: int = 0
    tokens: int = 0
    skipped_no_dependency: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "lock"}


class FillerPool:
    """Random retrieval chunks used as filler (never from the seed document)."""

    def __init__(self, index_dir: Path, chunk_tables: list[str]):
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


@dataclass
class StageContext:
    """What one stage's construction works with (actors are shared across stages)."""

    cfg: Config
    stage: int
    seq_len: int
    policy_version: int
    stage_dir: Path
    scorers: list
    verifiers: list
    retriever: object  # pipelines.retrieve.Retriever
    tokenizer: object
    fillers: FillerPool
    stop: threading.Event = field(default_factory=threading.Event)  # set: abandon the stage


def _candidates(ctx: StageContext, rows: list[dict]) -> list[list[dict]]:
    """Top-k chunks for every selected position of every row (one search and one chunk fetch
    for the whole batch); per row one candidate per distinct chunk, with the positions it was
    retrieved for and its best similarity."""
    queries = [q for row in rows for q in row["queries"]]
    owners = [row["doc_id"] for row in rows for _ in row["queries"]]
    hits = iter(ctx.retriever.search(queries, owners) if queries else [])
    per_row: list[dict[str, dict]] = []
    for row in rows:
        merged: dict[str, dict] = {}
        for pos in row["positions"]:
            for h in next(hits):
                c = merged.setdefault(h.chunk_id, {"chunk_id": h.chunk_id, "positions": []})
                c["similarity"] = max(c.get("similarity", -1.0), h.score)
                c["positions"].append(pos)
        per_row.append(merged)
    wanted = sorted({cid for merged in per_row for cid in merged})
    tokens = {c["chunk_id"]: c["input_ids"] for c in ctx.retriever.get_chunks(wanted)}
    for merged in per_row:
        for cid, c in merged.items():
            c["input_ids"] = tokens[cid]
    return [list(merged.values()) for merged in per_row]


def _example_texts(tokenizer, doc: dict, res: dict, chunk_ids) -> dict:
    """For a positive: the document just before its first verified position, the anchor token
    in [[ ]], and the chunk that lowered the entropy there."""
    if res["label"] != "positive" or not res["positions"]:
        return {"anchor_text": "", "chunk_text": ""}
    ids, t = doc["input_ids"], min(res["positions"])
    before = tokenizer.decode(ids[max(0, t - EXAMPLE_CONTEXT_TOKENS) : t])
    anchor = f"{before}[[{tokenizer.decode(ids[t : t + 1])}]]"
    return {"anchor_text": anchor, "chunk_text": tokenizer.decode(list(chunk_ids))}


def _nextlong_candidates(ctx: StageContext, doc: dict) -> list[dict]:
    """NExtLong: the document's own chunks as queries; top-k similar chunks, unverified."""
    step = ctx.cfg.index.chunk_tokens
    queries = [
        ctx.tokenizer.decode(doc["input_ids"][i : i + step])
        for i in range(0, len(doc["input_ids"]), step)
    ]
    hits = ctx.retriever.search(queries, [doc["doc_id"]] * len(queries))
    seen: dict[str, float] = {}
    for h in (h for q in hits for h in q):
        seen[h.chunk_id] = max(seen.get(h.chunk_id, -1.0), h.score)
    chunks = ctx.retriever.get_chunks(list(seen))
    return [
        {
            "chunk_id": c,
            "similarity": s,
            "input_ids": ch["input_ids"],
            "positions": [],
            "r": np.nan,
            "label": "negative",
        }
        for (c, s), ch in zip(seen.items(), chunks, strict=True)
    ]


@dataclass
class BatchResult:
    name: str
    samples: list[dict]
    screen_rows: list[dict]
    candidate_rows: list[dict]
    counts: StageCounts


def process_batch(ctx: StageContext, batch_index: int, docs: list[dict]) -> BatchResult:
    """Run one batch of seed documents through screen, retrieve, verify and assemble."""
    cfg, method = ctx.cfg, ctx.cfg.stages.method
    name = shard_name(ctx.stage, [d["doc_id"] for d in docs])
    samples, cand_rows, screen_rows = [], [], []
    counts = StageCounts()  # added to the stage's counts only if this batch is committed
    # Baselines without screening (nextlong, concat) run no scorer or verifier at all.
    scorer = ctx.scorers[batch_index % len(ctx.scorers)] if ctx.scorers else None
    verifier = ctx.verifiers[batch_index % len(ctx.verifiers)] if ctx.verifiers else None
    verified: list[list[dict]] = [[] for _ in docs]
    positions_of: list[list[int]] = [[] for _ in docs]
    if method in ("policylong", "entropylong"):
        with in_step("screen"):
            scored = ray.get(scorer.score.remote(docs))
            rows = [
                screen_row(d["doc_id"], d["input_ids"], s["entropy"], ctx.tokenizer, cfg)
                for d, s in zip(docs, scored, strict=True)
            ]
        screen_rows = [
            row | {"entropy": s["entropy"].tolist(), "policy_version": ctx.policy_version}
            for row, s in zip(rows, scored, strict=True)
        ]
        with in_step("retrieve"):
            cands = _candidates(ctx, rows)
        items = [(d | row, c) for d, row, c in zip(docs, rows, cands, strict=True)]
        with in_step("verify"):
            verified = ray.get(verifier.verify_many.remote(items))
        positions_of = [row["positions"] for row in rows]
        tokens_of = [{c["chunk_id"]: c["input_ids"] for c in cs} for cs in cands]
    elif method == "nextlong":
        with in_step("retrieve"):
            verified = [_nextlong_candidates(ctx, doc) for doc in docs]
        tokens_of = [{c["chunk_id"]: c["input_ids"] for c in cs} for cs in verified]
    else:
        tokens_of = [{} for _ in docs]
    for i, doc in enumerate(docs):
        positives: list[Piece] = []
        negatives: list[Piece] = []
        positions, results, by_id = positions_of[i], verified[i], tokens_of[i]
        for res in results:
            piece = Piece(
                res["chunk_id"],
                by_id[res["chunk_id"]],
                res["label"],
                res["r"],
                res["similarity"],
            )
            if res["label"] == "positive":
                positives.append(piece)
            elif res["label"] == "negative":
                negatives.append(piece)
            cand_rows.append(
                {
                    "doc_id": doc["doc_id"],
                    **{k: res[k] for k in ("chunk_id", "r", "similarity", "label", "positions")},
                    **_example_texts(ctx.tokenizer, doc, res, piece.input_ids),
                }
            )
        negatives.sort(key=lambda p: -p.similarity)  # the most similar are the hardest
        counts.add(
            documents=1,
            positions=len(positions),
            candidates=len(results),
            positives=len(positives),
            negatives=len(negatives),
        )
        if method in ("policylong", "entropylong") and not positives:
            counts.add(skipped_no_dependency=1)
            continue
        seed = int(
            hashlib.sha256(f"{cfg.run.seed}:{ctx.stage}:{doc['doc_id']}".encode()).hexdigest()[:8],
            16,
        )
        with in_step("assemble"):
            s = assemble_sample(
                ctx.stage,
                doc["doc_id"],
                doc["input_ids"],
                positives,
                negatives,
                ctx.fillers.sampler(doc["doc_id"]),
                ctx.seq_len,
                ctx.tokenizer.eos_token_id,
                cfg.assemble,
                seed,
            )
        samples.append(
            {
                "sample_id": s.sample_id,
                "stage": ctx.stage,
                "policy_version": ctx.policy_version,
                "seed_doc_id": s.seed_doc_id,
                "positions": positions,
                "input_ids": s.input_ids,
                "segments": s.segments,
            }
        )
    return BatchResult(name, samples, screen_rows, cand_rows, counts)


def _write_side_table(folder: Path, name: str, rows: list[dict], schema=None) -> None:
    """Per-batch screening/verification details for the report (written before the commit)."""
    if not rows:
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{name}.parquet.tmp"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    tmp.replace(folder / f"{name}.parquet")


def _commit(ctx: StageContext, log: SampleLog, result: BatchResult, room: int) -> int:
    """Commit one batch (its first `room` samples): details first, then the marked shard."""
    samples = result.samples[:room]
    _write_side_table(ctx.stage_dir / "screen", result.name, result.screen_rows)
    _write_side_table(
        ctx.stage_dir / "candidates", result.name, result.candidate_rows, CANDIDATE_SCHEMA
    )
    log.commit(result.name, pa.Table.from_pylist(samples, schema=SAMPLE_SCHEMA))
    return len(samples)


def construct_stage(ctx: StageContext, seed_docs: list[dict], budget_samples: int) -> dict:
    """Build the stage's samples until the budget is met or the seed documents run out.

    Batches are processed concurrently but committed strictly in batch order, and the batch that
    reaches the budget is cut to it. So the committed samples depend only on the inputs, never
    on timing: a killed and rerun stage commits exactly what an uninterrupted one would, and the
    trainer, which trains every committed sample once, knows its step count in advance.
    """
    cfg = ctx.cfg
    sample_log = SampleLog(ctx.stage_dir / "samples", writer=True)
    done = {c.name: c.rows for c in sample_log.commits()}
    counts = StageCounts()
    size = cfg.screen.batch_docs
    batches = [seed_docs[i : i + size] for i in range(0, len(seed_docs), size)]
    names = [shard_name(ctx.stage, [d["doc_id"] for d in b]) for b in batches]
    committed, next_commit, next_submit = 0, 0, 0
    results: dict[int, BatchResult] = {}
    bar = tqdm(total=budget_samples, desc=f"construct stage {ctx.stage}", unit="sample")
    first_commit_at = None
    pool = ThreadPoolExecutor(max_workers=cfg.stages.batches_in_flight)
    pending: dict = {}
    try:
        while next_commit < len(batches) and committed < budget_samples:
            if ctx.stop.is_set():
                raise StepFailed("construct", RuntimeError("stopped: training failed"))
            # Keep batches in flight ahead of the commit point (committed ones are skipped).
            while next_submit < len(batches) and len(pending) < cfg.stages.batches_in_flight:
                if names[next_submit] not in done:
                    fut = pool.submit(process_batch, ctx, next_submit, batches[next_submit])
                    pending[fut] = next_submit
                next_submit += 1
            if names[next_commit] in done:
                committed += done[names[next_commit]]
            else:
                while next_commit not in results:
                    fut = next(as_completed(pending))
                    results[pending.pop(fut)] = fut.result()
                result = results.pop(next_commit)
                with in_step("commit"):
                    n = _commit(ctx, sample_log, result, budget_samples - committed)
                first_commit_at = first_commit_at or time.time()
                counts.add(**(result.counts.to_dict() | {"samples": n, "tokens": n * ctx.seq_len}))
                committed += n
            bar.update(min(committed, budget_samples) - bar.n)
            next_commit += 1
    except BaseException as e:  # tell the trainer, which would otherwise wait for samples
        sample_log.fail(describe(e))
        raise
    finally:
        # Budget met (or an error): batches still in flight are not needed. Do not wait for
        # them; they commit nothing (only this loop commits).
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    sample_log.finish(
        counts.to_dict() | {"samples_committed": committed, "first_commit_at": first_commit_at}
    )
    log.info("stage %d construction: %s", ctx.stage, counts.to_dict())
    return counts.to_dict()
