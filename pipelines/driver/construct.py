"""One stage's data construction: screen -> retrieve -> verify -> assemble -> commit.

Seed documents flow through in small batches, several batches in flight at once (one driver
thread each), so screening of one batch overlaps retrieval and verification of the others and
committed samples reach the trainer while later batches are still being built. The method's spec
(pipelines/core/methods.py) decides how the chunks placed with a document are found:

    verified     screen, retrieve, verify: positives + on-policy hard negatives (PolicyLong, its
                 static ablation and EntropyLong; the policy the fleet's actors hold differs)
    meta_chunks  the document's meta-chunks' nearest chunks, unverified (NExtLong)
    none         random filler only (plain concatenation)

and how a sample is laid out from them (`layout`: pipelines/steps/assemble.py,
assemble_entropylong.py, assemble_nextlong.py). Every method sees the stage's document window
(assemble.document_window): the tokens screened are the tokens the sample holds.

The steps themselves live in pipelines/steps/screen.py, retrieve.py, actors/verifier.py,
assemble*.py.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from tqdm import tqdm

from pipelines.core.atomic import replaced_atomically
from pipelines.core.config import Config
from pipelines.core.errors import StepFailed, describe, in_step
from pipelines.core.records import SampleRow, ScreenedDoc, Stage, StageCounts, Verdict
from pipelines.core.sample_log import SAMPLE_SCHEMA, SampleLog, shard_name
from pipelines.driver.fleet import Fleet
from pipelines.steps.assemble import Piece, anchors_kept, assemble_sample, document_window
from pipelines.steps.assemble_entropylong import Unit, pack_units
from pipelines.steps.assemble_nextlong import interleave, pick_negatives
from pipelines.steps.retrieve import candidates_for, meta_chunk_hits
from pipelines.steps.screen import screen_batch
from pipelines.world.tokenizer import document_separator_id

log = logging.getLogger(__name__)
CANDIDATE_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("chunk_id", pa.string()),
        ("r", pa.float32()),
        ("similarity", pa.float32()),
        ("label", pa.string()),
        ("positions", pa.list_(pa.int32())),
        # positives only (else ""; verify.example_min_r): what a reader needs to judge the
        # dependency is real
        ("anchor_text", pa.string()),
        ("chunk_text", pa.string()),
    ]
)
EXAMPLE_CONTEXT_TOKENS = 24  # document tokens shown before the anchor in a positive's example


@dataclass
class StageContext:
    """What one stage's construction works with (the fleet is shared across stages)."""

    cfg: Config
    stage: Stage
    stage_dir: Path
    fleet: Fleet
    tokenizer: object  # a transformers tokenizer
    stop: threading.Event = field(default_factory=threading.Event)  # set: abandon the stage


@dataclass
class DocWork:
    """One seed document on its way to a sample: what steps 1-3 found for it."""

    doc: dict  # {doc_id, input_ids}
    screened: ScreenedDoc | None = None  # None: the method does not screen
    verdicts: list[Verdict] = field(default_factory=list)
    chunk_tokens: dict[str, list[int]] = field(default_factory=dict)  # chunk_id -> input_ids

    @property
    def positions(self) -> list[int]:
        return self.screened.positions if self.screened else []


@dataclass
class BatchResult:
    name: str
    samples: list[SampleRow]
    screen_rows: list[dict]
    candidate_rows: list[dict]
    counts: StageCounts


def _screen_retrieve_verify(ctx: StageContext, docs: list[dict]) -> list:
    """Steps 1-3 for a batch: one call on the least-loaded scorer, one search, one call on the
    least-loaded verifier (cluster/actor_group.py)."""
    fleet = ctx.fleet
    with in_step("screen"), fleet.scorers.lease() as scorer:
        version = ctx.stage.policy_version
        screened = screen_batch(scorer, docs, ctx.tokenizer, ctx.cfg.screen, version)
    with in_step("retrieve"):
        cands = candidates_for(fleet.retriever, screened)
    with in_step("verify"), fleet.verifiers.lease() as verifier:
        verdicts = ray.get(verifier.verify_many.remote(list(zip(screened, cands, strict=True))))
    return [
        DocWork(d, s, v, {c.chunk_id: c.input_ids for c in cs})
        for d, s, v, cs in zip(docs, screened, verdicts, cands, strict=True)
    ]


def _nextlong_samples(ctx: StageContext, docs: list[dict], counts: StageCounts) -> list:
    """NExtLong: per document, its meta-chunks interleaved with their unverified nearest
    chunks of other documents (pipelines/steps/assemble_nextlong.py)."""
    samples = []
    for d in docs:
        with in_step("retrieve"):
            metas, hits, k = meta_chunk_hits(
                ctx.fleet.retriever, d, ctx.tokenizer,
                ctx.cfg.assemble.nextlong_meta_chunk_chars, ctx.stage.seq_len,
            )  # fmt: skip
        pieces = [[Piece(c.chunk_id, c.input_ids, "negative", similarity=c.similarity,
                         doc_id=d["doc_id"]) for c in q] for q in hits]  # fmt: skip
        negatives = pick_negatives(pieces, k)
        n = sum(len(x) for x in negatives)
        counts.add(documents=1, candidates=n, negatives=n)
        with in_step("assemble"):
            s = interleave(
                ctx.stage.index, d["doc_id"], d["input_ids"], metas, negatives, ctx.stage.seq_len
            )
        if s is None:
            counts.add(skipped_short=1)
        else:
            samples.append(_sample_row(ctx, s, []))
    return samples


def _example_texts(tokenizer, work: DocWork, v: Verdict, min_r: float) -> dict:
    """For a positive (or any candidate with r >= min_r): the document just before its first
    verified position, the anchor token in [[ ]], and the chunk that lowered the entropy there."""
    if not (v.label == "positive" or v.r >= min_r) or not v.positions:
        return {"anchor_text": "", "chunk_text": ""}
    ids, t = work.doc["input_ids"], min(v.positions)
    before = tokenizer.decode(ids[max(0, t - EXAMPLE_CONTEXT_TOKENS) : t])
    anchor = f"{before}[[{tokenizer.decode(ids[t : t + 1])}]]"
    return {"anchor_text": anchor, "chunk_text": tokenizer.decode(work.chunk_tokens[v.chunk_id])}


def _candidate_rows(ctx: StageContext, work: DocWork) -> list[dict]:
    verify = ctx.cfg.verify
    min_r = min(verify.tau_pos, verify.example_min_r)
    return [
        {
            "doc_id": work.doc["doc_id"],
            "chunk_id": v.chunk_id,
            "r": v.r,
            "similarity": v.similarity,
            "label": v.label,
            "positions": v.positions,
            **_example_texts(ctx.tokenizer, work, v, min_r),
        }
        for v in work.verdicts
    ]


def _pieces(work: DocWork, label: str) -> list[Piece]:
    doc_id = work.doc["doc_id"]
    return [
        Piece(v.chunk_id, work.chunk_tokens[v.chunk_id], label, v.r, v.similarity, doc_id,
              list(v.positions))
        for v in work.verdicts
        if v.label == label
    ]  # fmt: skip


def _sample_seed(ctx: StageContext, doc_id: str) -> int:
    key = f"{ctx.cfg.run.seed}:{ctx.stage.index}:{doc_id}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)


def _sample_row(ctx: StageContext, s, positions: list[int]) -> SampleRow:
    return SampleRow(
        s.sample_id, ctx.stage.index, ctx.stage.policy_version, s.seed_doc_id, positions,
        s.input_ids, s.segments,
    )  # fmt: skip


def _entropylong_samples(ctx: StageContext, work: list[DocWork], counts: StageCounts) -> list:
    """EntropyLong: [C_pi(1); ...; C_pi(m); D] units of the documents with a verified context,
    packed into samples (pipelines/steps/assemble_entropylong.py)."""
    units = []
    for w in work:
        positives = _pieces(w, "positive")
        counts.add(
            documents=1, positions=len(w.positions), candidates=len(w.verdicts),
            positives=len(positives), negatives=len(_pieces(w, "negative")),
        )  # fmt: skip
        if positives:
            units.append(Unit(w.doc["doc_id"], w.doc["input_ids"], positives))
        else:
            counts.add(skipped_no_dependency=1)
    if not units:
        return []
    eos = document_separator_id(ctx.tokenizer)
    with in_step("assemble"):
        packed = pack_units(
            ctx.stage.index, units, ctx.stage.seq_len, eos, _sample_seed(ctx, units[0].doc_id)
        )
    counts.add(units_dropped=packed.units_dropped)
    positions = {w.doc["doc_id"]: w.positions for w in work}
    return [_sample_row(ctx, s, positions[s.seed_doc_id]) for s in packed.samples]


def _assemble(ctx: StageContext, work: DocWork, counts: StageCounts) -> SampleRow | None:
    """Step 4 for one document: its sample row, or None when it has no verified dependency."""
    positives, negatives = _pieces(work, "positive"), _pieces(work, "negative")
    negatives.sort(key=lambda p: -p.similarity)  # the most similar are the hardest
    counts.add(
        documents=1,
        positions=len(work.positions),
        candidates=len(work.verdicts),
        positives=len(positives),
        negatives=len(negatives),
    )
    if ctx.fleet.method.screens and not positives:
        counts.add(skipped_no_dependency=1)
        return None
    doc_id = work.doc["doc_id"]
    filler = ctx.fleet.fillers.sampler(doc_id)
    with in_step("assemble"):
        s = assemble_sample(
            ctx.stage.index, doc_id, work.doc["input_ids"], positives, negatives, filler,
            ctx.stage.seq_len, document_separator_id(ctx.tokenizer), ctx.cfg.assemble,
            _sample_seed(ctx, doc_id),
        )  # fmt: skip
    return _sample_row(ctx, s, work.positions)


class BatchAbandoned(Exception):
    """A batch still in flight when its stage ended (budget met or failed): nobody needs it."""


def _unless_stopped(ctx: StageContext, abandoned: threading.Event) -> None:
    if ctx.stop.is_set() or abandoned.is_set():
        raise BatchAbandoned()


def process_batch(ctx: StageContext, docs: list[dict], abandoned: threading.Event) -> BatchResult:
    """One batch of seed documents through the method's steps, up to (not including) commit."""
    method = ctx.fleet.method
    counts = StageCounts()  # added to the stage's counts only if this batch is committed
    work = [DocWork(d) for d in docs]
    _unless_stopped(ctx, abandoned)
    if method.candidates == "verified":
        work = _screen_retrieve_verify(ctx, docs)
        _unless_stopped(ctx, abandoned)
    if method.layout == "interleaved":
        samples = _nextlong_samples(ctx, docs, counts)
    elif method.layout == "units":
        samples = _entropylong_samples(ctx, work, counts)
    else:
        samples = [s for w in work if (s := _assemble(ctx, w, counts)) is not None]
    screen_rows = [
        w.screened.table_row() | {"entropy": w.screened.entropy.tolist()}
        for w in work
        if w.screened is not None
    ]
    cand_rows = [row for w in work for row in _candidate_rows(ctx, w)]
    name = shard_name(ctx.stage.index, [d["doc_id"] for d in docs])
    return BatchResult(name, samples, screen_rows, cand_rows, counts)


def _write_side_table(folder: Path, name: str, rows: list[dict], schema=None) -> None:
    """Per-batch screening/verification details for the report (written before the commit)."""
    if not rows:
        return
    folder.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(folder / f"{name}.parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)


def _commit(ctx: StageContext, log: SampleLog, result: BatchResult, room: int) -> int:
    """Commit one batch (its first `room` samples): details first, then the marked shard."""
    samples = result.samples[:room]
    for s in samples:
        total, kept = anchors_kept(s.segments)
        result.counts.add(anchors=total, anchors_in_sample=kept)
    _write_side_table(ctx.stage_dir / "screen", result.name, result.screen_rows)
    _write_side_table(
        ctx.stage_dir / "candidates", result.name, result.candidate_rows, CANDIDATE_SCHEMA
    )
    rows = [s.to_row() for s in samples]
    log.commit(result.name, pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA))
    return len(samples)


def _batches(ctx: StageContext, seed_docs: list[dict]) -> tuple[list[list[dict]], list[str]]:
    """The seed documents cut to the stage's document window, in batches, and each batch's
    shard name (what a resumed stage finds committed)."""
    window = document_window(ctx.stage.seq_len, ctx.cfg.screen.max_doc_tokens)
    seed_docs = [d | {"input_ids": d["input_ids"][:window]} for d in seed_docs]
    size = ctx.cfg.screen.batch_docs
    batches = [seed_docs[i : i + size] for i in range(0, len(seed_docs), size)]
    return batches, [shard_name(ctx.stage.index, [d["doc_id"] for d in b]) for b in batches]


def construct_stage(ctx: StageContext, seed_docs: list[dict], budget_samples: int) -> StageCounts:
    """Build the stage's samples until the budget is met or the seed documents run out.

    Batches are processed concurrently but committed strictly in batch order, and the batch that
    reaches the budget is cut to it. So the committed samples depend only on the inputs, never
    on timing: a killed and rerun stage commits exactly what an uninterrupted one would, and the
    trainer, which trains every committed sample once, knows its step count in advance.
    """
    cfg, k, seq_len = ctx.cfg, ctx.stage.index, ctx.stage.seq_len
    batches, names = _batches(ctx, seed_docs)
    sample_log = SampleLog(ctx.stage_dir / "samples", writer=True)
    done = {c.name: c.rows for c in sample_log.commits()}
    counts = StageCounts()
    committed, next_commit, next_submit = 0, 0, 0
    results: dict[int, BatchResult] = {}
    bar = tqdm(total=budget_samples, desc=f"construct stage {k}", unit="sample")
    first_commit_at = None
    pool = ThreadPoolExecutor(max_workers=cfg.stages.batches_in_flight)
    pending: dict = {}
    abandoned = threading.Event()  # set when this call ends: its batches in flight stop
    try:
        while next_commit < len(batches) and committed < budget_samples:
            if ctx.stop.is_set():
                raise StepFailed("construct", RuntimeError("stopped: training failed"))
            # Keep batches in flight ahead of the commit point (committed ones are skipped).
            while next_submit < len(batches) and len(pending) < cfg.stages.batches_in_flight:
                if names[next_submit] not in done:
                    fut = pool.submit(process_batch, ctx, batches[next_submit], abandoned)
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
                counts.merge(result.counts)
                counts.add(samples=n, tokens=n * seq_len)
                committed += n
            bar.update(min(committed, budget_samples) - bar.n)
            next_commit += 1
    except BaseException as e:  # tell the trainer, which would otherwise wait for samples
        sample_log.fail(describe(e))
        raise
    finally:
        # Budget met (or an error): batches still in flight are not needed. Do not wait for
        # them; they commit nothing (only this loop commits). They stop at their next step, and
        # the fleet waits for them before it kills the actors they call (fleet.close).
        abandoned.set()
        ctx.fleet.stragglers.extend(pending)
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    sample_log.finish(counts, committed, first_commit_at)
    log.info("stage %d construction: %s", k, counts.to_dict())
    return counts
