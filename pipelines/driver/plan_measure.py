"""`policylong plan --measure N`: the yields the cost model needs, measured on this setting.

The plan's default yields were measured on the embedded tiny default; another model or corpus can
give far fewer samples per document (SmolLM2-135M at tau_pos 0.4: none in 48 documents). This
screens, retrieves and verifies N of stage 0's seed documents with the configured model, index
and thresholds by the real construction path (`policylong construct` of stage 0 alone, into the
run `<run.name>-plan-measure`), then counts what came out:

    positions per document, candidates per position, the r quantiles, positives and hard
    negatives per document at the configured tau_pos / tau_neg and at TAU_POS_GRID (recounted
    from the candidates table's r: no re-run), samples per document

and re-prices every stage with them (pipelines/driver/plan.py), saying how many seed documents each
stage needs and whether the corpus has them. Stage 0's document window stands for every stage's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
import threading
from pathlib import Path

import numpy as np

from pipelines.core.config import Config
from pipelines.core.errors import UserError
from pipelines.core.methods import method_spec
from pipelines.driver.plan import Assumptions, model_shape, plan, stage_work
from pipelines.driver.plan_split import describe

TAU_POS_GRID = (0.05, 0.1, 0.2, 0.4)
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
# Only for the estimate said before starting: a forward on one CPU actor, FLOP/s, and the start
# of Ray, the base model and the fleet. Rough on purpose; the measured seconds are saved.
ACTOR_FLOPS_PER_S = 2e10
STARTUP_S = 60.0


def measure_config(cfg: Config, n: int) -> Config:
    """Stage 0 alone, construct-only, on its first n seed documents (seed_share's order), with a
    budget no document count can reach, into a run of its own beside the user's."""
    s = cfg.stages
    stages = dataclasses.replace(
        s, seq_lens=s.seq_lens[:1], rope_thetas=s.rope_thetas[:1], train=False,
        seed_docs_per_stage=n, tokens_per_stage=max(s.tokens_per_stage, n * s.seq_lens[0]),
    )  # fmt: skip
    run = dataclasses.replace(cfg.run, name=f"{cfg.run.name}-plan-measure")
    evals = dataclasses.replace(cfg.eval, heldout_gap_samples=0)
    # the texts of every candidate a threshold of the grid would keep: examples per threshold
    verify = dataclasses.replace(cfg.verify, example_min_r=min(TAU_POS_GRID))
    return dataclasses.replace(cfg, stages=stages, run=run, eval=evals, verify=verify)


def estimate_seconds(mcfg: Config, model_config: str | None) -> float:
    """Screening and verification FLOPs of the n documents at the default yields, on CPU."""
    shape = model_shape(mcfg, model_config)
    w = stage_work(mcfg, shape, Assumptions(samples_per_doc=1.0), 0)
    r = mcfg.resources
    busy = w["scorer_flops"] / r.scorer.count + w["verifier_flops"] / r.verifier.count
    return STARTUP_S + busy / ACTOR_FLOPS_PER_S


def _progress(sdir: Path, n: int, batch: int, done: threading.Event) -> None:
    """Documents through screening: each committed batch writes one screen table."""
    from tqdm import tqdm

    with tqdm(total=n, desc="plan --measure", unit="doc", disable=False) as bar:
        while not done.wait(1.0):
            seen = min(n, batch * len(list((sdir / "screen").glob("*.parquet"))))
            if seen > bar.n:  # no redraw without progress (a log would get a line a second)
                bar.update(seen - bar.n)
        if bar.n < n:
            bar.update(n - bar.n)


def share_corpus(cfg: Config, mcfg: Config) -> None:
    """The user's run's ingested corpus, when it is there, instead of a second ingest (minutes
    for a large corpus): the measurement run's corpus links to it (same corpus config)."""
    mine, theirs = mcfg.run_dir / "corpus", cfg.run_dir / "corpus"
    if (theirs / "source.json").is_file() and not mine.exists():
        mine.parent.mkdir(parents=True, exist_ok=True)
        mine.symlink_to(theirs.resolve(), target_is_directory=True)


def run_measurement(cfg: Config, mcfg: Config, n: int) -> dict:
    """The construct-only run of stage 0 (from scratch: a stale one may have other thresholds);
    the stage manifest."""
    import os

    from pipelines.driver.run import run
    from pipelines.driver.stage_driver import stage_dir

    for old in ("stages", "dataset"):
        shutil.rmtree(mcfg.run_dir / old, ignore_errors=True)
    share_corpus(cfg, mcfg)
    sdir = stage_dir(mcfg, 0)
    done = threading.Event()
    bar = threading.Thread(target=_progress, args=(sdir, n, mcfg.screen.batch_docs, done))
    before = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # construction's own bar counts samples: one bar, ours
    bar.start()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the run's summary is not ours to print
            run(mcfg)
    finally:
        done.set()
        bar.join()
        if before is None:
            del os.environ["TQDM_DISABLE"]
        else:
            os.environ["TQDM_DISABLE"] = before
    return json.loads((sdir / "stage_manifest.json").read_text())


def _table(folder: Path, columns: list[str]) -> dict[str, list]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(folder.glob("*.parquet"))
    if not files:
        return {c: [] for c in columns}
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files]).to_pydict()


def yields(mcfg: Config, counts: dict) -> dict:
    """What the measurement found, per document, at the configured thresholds and at the grid's
    tau_pos (a positive is r >= tau_pos, a hard negative r <= tau_neg: actors/verifier.py)."""
    from pipelines.driver.stage_driver import stage_dir

    cand = _table(stage_dir(mcfg, 0) / "candidates", ["doc_id", "r", "anchor_text", "chunk_text"])
    r = np.asarray(cand["r"], dtype=np.float64)
    doc_ids = np.asarray(cand["doc_id"], dtype=object)
    docs = max(1, counts["documents"])
    v = mcfg.verify

    def at(tau_pos: float) -> dict:
        pos = r >= tau_pos
        with_positive = len(set(doc_ids[pos]))
        return {
            "tau_pos": tau_pos,
            "positives_per_doc": int(pos.sum()) / docs,
            "negatives_per_doc": int(((r <= v.tau_neg) & ~pos).sum()) / docs,
            "docs_with_positive": with_positive,
            "samples_per_doc": with_positive / docs,  # one sample per such document
        }

    configured = at(v.tau_pos) | {"samples_per_doc": counts["samples"] / docs}
    return {
        "documents": counts["documents"],
        "positions_per_doc": counts["positions"] / docs,
        "candidates_per_position": counts["candidates"] / max(1, counts["positions"]),
        "r_quantiles": {str(q): float(np.quantile(r, q)) for q in QUANTILES} if len(r) else {},
        "tau_neg": v.tau_neg,
        "configured": configured,
        "tau_pos_grid": [at(t) for t in TAU_POS_GRID],
        "examples": examples(r, cand["anchor_text"], cand["chunk_text"]),
    }


def examples(r: np.ndarray, anchors: list[str], chunks: list[str]) -> dict[str, list[dict]]:
    """Per tau_pos of the grid, what a positive there looks like: the best candidate and the
    weakest that still passes (the one a user adopting that threshold should judge)."""
    out = {}
    order = np.argsort(-r, kind="stable")
    for tau in TAU_POS_GRID:
        passing = [int(i) for i in order if r[i] >= tau]
        picks = sorted({passing[0], passing[-1]}, key=lambda i: -r[i]) if passing else []
        out[str(tau)] = [
            {"r": float(r[i]), "anchor": " ".join(anchors[i].split())[-160:],
             "chunk": " ".join(chunks[i].split())[:200]}
            for i in picks
        ]  # fmt: skip
    return out


def corpus_documents(mcfg: Config) -> int:
    from pipelines.world.ingest import read_docs

    return read_docs(mcfg.run_dir / "corpus", "train").num_rows


def fill(cfg: Config, result: dict, corpus_docs: int) -> list[dict]:
    """Per stage: the seed documents it needs at the measured yield, cumulated (each stage takes
    a disjoint slice of the corpus: policylong.seed_share), and whether the corpus has them."""
    rows, total = [], 0
    for s in result["stages"]:
        needed = s["seed_docs_needed"]
        total = None if needed is None or total is None else total + needed
        rows.append({
            "stage": s["stage"], "seed_docs_needed": needed, "cumulative": total,
            "seed_docs_per_stage": cfg.stages.seed_docs_per_stage,
            "corpus_has": total is not None and total <= corpus_docs,
        })  # fmt: skip
    return rows


def per_thousand(x: float) -> str:
    return f"{x * 1000:,.0f}"


def cannot_fill_line(cfg: Config, y: dict, rows: list[dict], corpus_docs: int) -> str | None:
    """One plain line naming the key to change, or None when every stage fills."""
    short = [r for r in rows if not r["corpus_has"]]
    few = [r for r in rows if r["corpus_has"] and r["seed_docs_needed"] > r["seed_docs_per_stage"]]
    if not short and not few:
        return None
    if not short:
        most = max(r["seed_docs_needed"] for r in few)
        return (
            f"stages {', '.join(str(r['stage']) for r in few)} need up to {most:,} seed "
            f"documents at tau_pos {cfg.verify.tau_pos}: raise stages.seed_docs_per_stage "
            f"(now {cfg.stages.seed_docs_per_stage:,}; the corpus has {corpus_docs:,})"
        )
    c = y["configured"]
    others = [g for g in y["tau_pos_grid"] if g["tau_pos"] != c["tau_pos"]]
    alt = "; ".join(f"at {g['tau_pos']} it gives {per_thousand(g['samples_per_doc'])}"
                    for g in others)  # fmt: skip
    budget = sum(r["seed_docs_per_stage"] for r in rows)
    fills = [g["tau_pos"] for g in others if g["samples_per_doc"] * corpus_docs >= budget]
    fix = (
        f"lower verify.tau_pos (to {max(fills)} or below)"
        if fills and max(fills) < c["tau_pos"]
        else "lower verify.tau_pos or use a larger corpus (corpus.source)"
    )
    top = max(y["r_quantiles"].values(), default=float("nan"))
    return (
        f"cannot fill stage{'s' if len(short) > 1 else ''} "
        f"{', '.join(str(r['stage']) for r in short)}: at tau_pos {c['tau_pos']} this corpus "
        f"gives {per_thousand(c['samples_per_doc'])} samples per 1,000 documents; {alt} (largest "
        f"r measured: {top:.3g}): {fix}"
    )


def measure(cfg: Config, n: int, base: Assumptions, model_config: str | None) -> dict:
    """Measure, re-price, print, save beside the measurement run; the saved record."""
    if not method_spec(cfg.stages.method).screens:
        raise UserError(
            f"plan --measure measures screening yields, and stages.method "
            f"'{cfg.stages.method}' screens nothing: its plan needs no yield"
        )
    mcfg = measure_config(cfg, n)
    eta = estimate_seconds(mcfg, model_config)
    print(
        f"measuring {n} seed documents of stage 0 (construct-only run '{mcfg.run_dir}'): "
        f"roughly {eta / 60:.0f} min on this machine ({eta:.0f} s)",
        flush=True,
    )
    manifest = run_measurement(cfg, mcfg, n)
    y = yields(mcfg, manifest["construction"])
    a = dataclasses.replace(
        base, samples_per_doc=y["configured"]["samples_per_doc"],
        positions_per_doc=y["positions_per_doc"],
        candidates_per_position=y["candidates_per_position"],
    )  # fmt: skip
    priced = plan(cfg, a, model_config)
    corpus_docs = corpus_documents(mcfg)
    rows = fill(cfg, priced, corpus_docs)
    record = {
        "measured": y | {"wall_s": manifest["wall_s"], "estimate_s": eta},
        "corpus_documents": corpus_docs,
        "plan": priced,
        "fill": rows,
        "cannot_fill": cannot_fill_line(cfg, y, rows, corpus_docs),
    }
    out = mcfg.run_dir / "plan_measure.json"
    out.write_text(json.dumps(record, indent=2))
    print_measurement(record, out)
    return record


def print_measurement(record: dict, out: Path) -> None:
    y = record["measured"]
    print(
        f"measured {y['documents']} documents in {y['wall_s']:.0f} s: "
        f"{y['positions_per_doc']:.2f} positions per document, "
        f"{y['candidates_per_position']:.2f} candidates per position"
    )
    q = y["r_quantiles"]
    print("r quantiles: " + ", ".join(f"q{float(k):g} {v:.3f}" for k, v in q.items()))
    print(f"tau_pos  positives/doc  negatives/doc (tau_neg {y['tau_neg']})  samples/1000 docs")
    for g in [y["configured"] | {"mark": " (configured)"}] + y["tau_pos_grid"]:
        print(
            f"{g['tau_pos']:7g} {g['positives_per_doc']:14.2f} {g['negatives_per_doc']:27.2f} "
            f"{per_thousand(g['samples_per_doc']):>18s}{g.get('mark', '')}"
        )
    print("stage  seed_docs_needed  cumulative  corpus_has  scorer_h  verifier_h  trainer_h")
    for s, f in zip(record["plan"]["stages"], record["fill"], strict=True):
        need = "never" if f["seed_docs_needed"] is None else f"{f['seed_docs_needed']:,}"
        total = "-" if f["cumulative"] is None else f"{f['cumulative']:,}"
        print(
            f"{s['stage']:5d} {need:>17s} {total:>11s} {str(f['corpus_has']):>11s} "
            f"{s['scorer_gpu_h']:9.2f} {s['verifier_gpu_h']:11.2f} {s['trainer_gpu_h']:10.2f}"
        )
    for tau, picks in y["examples"].items():
        for e in picks:
            what = f"...{e['anchor'][-100:]!r} <- {e['chunk'][:100]!r}"
            print(f"  r {e['r']:.3f} (tau_pos {tau}): {what}")
    print("\n".join(describe(record["plan"]["split"])))
    print(f"corpus: {record['corpus_documents']:,} documents; saved {out}")
    if record["cannot_fill"]:
        print(record["cannot_fill"])
