"""The stage driver — PolicyLong's algorithm box.

    pi_0 <- base policy; index <- chunk, embed and index the corpus
    for k = 0 .. K-1:
        make sure every scorer and verifier holds pi_k           (broadcast; PolicyLong only)
        in the background: construct stage k with pi_k           (screen, retrieve, verify,
                                                                  assemble, commit to the log)
        meanwhile: train pi_k on the log as it grows -> pi_{k+1} (Ray Train, RoPE raised)
        save pi_{k+1}, write the stage manifest
    report

A stage whose manifest exists is done: a killed driver restarted with the same command resumes at
the first incomplete stage, and construction and training inside it resume from their own logs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipelines.config import Config
from pipelines.errors import StageFailed, StepFailed, describe, in_step

log = logging.getLogger(__name__)


def stage_dir(cfg: Config, k: int) -> Path:
    return cfg.run_dir / "stages" / f"stage_{k}"


def stage_complete(cfg: Config, k: int) -> bool:
    return (stage_dir(cfg, k) / "stage_manifest.json").is_file()


def seed_share(cfg: Config, docs: list[dict], k: int) -> list[dict]:
    """Stage k's seed documents: a disjoint slice of one seeded permutation of the corpus."""
    order = np.random.default_rng(cfg.run.seed).permutation(len(docs))
    n = cfg.stages.seed_docs_per_stage
    return [docs[i] for i in np.roll(order, -k * n)[:n]]


def stage_timeline(sdir: Path, started: float) -> dict:
    """Seconds from the stage's start to its milestones: where the stage's wall time goes."""
    samples = json.loads((sdir / "samples" / "manifest.json").read_text())
    train_log = sdir / "train" / "train_log.jsonl"  # absent when no sample was committed
    lines = train_log.read_text().splitlines() if train_log.is_file() else []
    steps = [json.loads(x)["t"] for x in lines] or [float("nan")]
    first_commit = samples["counts"].get("first_commit_at") or float("nan")
    return {
        "first_commit": round(first_commit - started, 2),
        "construction_done": round(samples["finished_at"] - started, 2),
        "first_train_step_done": round(steps[0] - started, 2),
        "last_train_step_done": round(steps[-1] - started, 2),
        "stage_done": round(time.time() - started, 2),
    }


def _construct(out: dict, ctx, seed_docs: list[dict], budget: int) -> None:
    """The construction thread: its counts, or the error that ended it, land in `out`."""
    from pipelines.construct import construct_stage

    try:
        out.update(construct_stage(ctx, seed_docs, budget))
    except Exception as e:  # the driver reports it; a thread's exception would only be printed
        out["error"] = e


def _release(groups, actors, retriever) -> None:
    import ray

    for transport, _ in groups:
        transport.close()
    for actor in actors:
        ray.kill(actor)
    if retriever is not None:
        retriever.close()


def _rerun_hint(sdir: Path) -> str:
    return f"committed samples are kept ({sdir / 'samples'}): fix the cause and rerun to resume"


def run_policylong(cfg: Config) -> dict:
    import ray

    from actors.scorer import create_scorers
    from actors.verifier import create_verifiers
    from cluster.runtime import check_train_fits
    from cluster.weight_sync import broadcast, transport_groups
    from pipelines.build_index import build_index, cached_index_dir
    from pipelines.construct import FillerPool, StageContext
    from pipelines.ingest import read_docs
    from pipelines.report import write_report
    from pipelines.retrieve import Retriever
    from pipelines.screen import tokenize_docs
    from pipelines.tokenizer import load_tokenizer
    from pipelines.train import StageTrainSpec, train_stage
    from pipelines.world import ensure_world

    world = ensure_world(cfg)
    tokenizer_dir = Path(cfg.tokenizer.path or world.model_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    method = cfg.stages.method
    on_policy = method == "policylong"
    needs_policy = method in ("policylong", "entropylong")
    index_dir = cached_index_dir(cfg, world.corpus_dir, tokenizer_dir)
    index = build_index(index_dir, world.corpus_dir, tokenizer_dir, cfg.index, cfg.run.seed)
    docs = tokenize_docs(tokenizer, read_docs(world.corpus_dir, "train"), cfg.screen.max_doc_tokens)
    probe_ids = docs[0]["input_ids"][: cfg.stages.probe_tokens]

    # pi_k: the newest finished stage's checkpoint (resume), else the base.
    first = next((k for k in range(len(cfg.stages.seq_lens)) if not stage_complete(cfg, k)), None)
    policy_dir, version = Path(world.model_dir).resolve(), 0
    if first:
        policy_dir, version = (stage_dir(cfg, first - 1) / "model").resolve(), first
    if first is None:
        log.info("all %d stages are complete: nothing to do", len(cfg.stages.seq_lens))
        return {
            "stages": len(cfg.stages.seq_lens),
            "new_work": False,
            "report": str(write_report(cfg.run_dir)),
        }

    actor_version = version if on_policy else 0
    actor_dir = policy_dir if on_policy else Path(world.model_dir).resolve()
    scorers = create_scorers(cfg, actor_dir, version=actor_version) if needs_policy else []
    verifiers = create_verifiers(cfg, actor_dir, version=actor_version) if needs_policy else []
    groups = transport_groups(cfg, scorers, verifiers)
    retriever = Retriever.from_config(cfg, index.index_dir) if method != "concat" else None
    fillers = FillerPool(index.index_dir, index.manifest["chunk_tables"])
    broadcasts, busy = [], {}
    actors = scorers + verifiers
    # Start-up (engines, the entropy kernel's compilation, the embedder) is paid once per run,
    # before the first stage, not inside it.
    ready = time.perf_counter()
    ray.get([a.warmup.remote() for a in actors])
    if retriever is not None:
        retriever.search(["warm-up query"], [""])
    log.info("actors ready in %.1f s", time.perf_counter() - ready)
    actor_names = [f"scorer{i}" for i in range(len(scorers))]
    actor_names += [f"verifier{i}" for i in range(len(verifiers))]

    try:
        for k in range(first, len(cfg.stages.seq_lens)):
            seq_len, theta = cfg.stages.seq_lens[k], cfg.stages.rope_thetas[k]
            sdir = stage_dir(cfg, k)
            sdir.mkdir(parents=True, exist_ok=True)
            synced = None
            if on_policy and version > 0:  # every actor must hold pi_k before stage k starts
                expected = json.loads((policy_dir / "probe.json").read_text())["entropies"]
                synced = broadcast(
                    groups, policy_dir, version, probe_ids, expected, cfg.stages.probe_tolerance
                )
                broadcasts.append(synced)
            log.info(
                "stage %d: seq_len %d, RoPE base %.3g, policy version %d",
                k,
                seq_len,
                theta,
                version,
            )
            ctx = StageContext(
                cfg,
                k,
                seq_len,
                actor_version,
                sdir,
                scorers,
                verifiers,
                retriever,
                tokenizer,
                fillers,
            )
            budget = max(1, cfg.stages.tokens_per_stage // seq_len)
            result: dict = {}
            construction = threading.Thread(
                target=_construct,
                args=(result, ctx, seed_share(cfg, docs, k), budget),
                name=f"construct-stage-{k}",
            )
            check_train_fits(
                cfg.cluster
            )  # before any work: fail fast rather than hang in Ray Train
            started = time.time()
            busy_before = busy if k > first else {}
            construction.start()
            spec = StageTrainSpec(
                stage=k,
                init_model_dir=str(policy_dir),
                out_model_dir=str((sdir / "model").resolve()),
                sample_log_dir=str((sdir / "samples").resolve()),
                ledger_dir=str((sdir / "train").resolve()),
                seq_len=seq_len,
                rope_theta=theta,
                budget_samples=budget,
                train=asdict(cfg.train),
                threads=cfg.cluster.torch_threads_per_actor,
                probe_ids=probe_ids,
                lm_head_chunk_tokens=cfg.screen.lm_head_chunk_tokens,
                lm_head_vocab_tile=cfg.screen.lm_head_vocab_tile,
            )
            try:
                with in_step("train"):
                    train_stage(
                        spec,
                        cfg.cluster.num_train_workers,
                        cfg.cluster.cpus_per_train_worker,
                        cfg.cluster.gpus_per_train_worker,
                    )
            except StepFailed as train_error:
                ctx.stop.set()  # construction must not go on for a stage that cannot finish
                construction.join()
                cause = result.get("error") or train_error  # the trainer stopped because of it
                raise StageFailed(
                    f"stage {k} failed in {describe(cause)}; {_rerun_hint(sdir)}"
                ) from None
            construction.join()
            if "error" in result:
                raise StageFailed(
                    f"stage {k} failed in {describe(result['error'])}; {_rerun_hint(sdir)}"
                )
            if not result.get("samples"):
                log.warning(
                    "stage %d committed no samples (%s): pi_%d = pi_%d untrained; lower "
                    "verify.tau_pos or raise stages.seed_docs_per_stage",
                    k, result, k + 1, k,
                )  # fmt: skip
            busy = dict(
                zip(actor_names, ray.get([a.busy_seconds.remote() for a in actors]), strict=True)
            )
            manifest = {
                "stage": k,
                "seq_len": seq_len,
                "rope_theta": theta,
                "method": method,
                "policy_version_used": ctx.policy_version,
                "model_dir": spec.out_model_dir,
                "construction": result,
                "wall_s": time.time() - started,
                "broadcast": synced,  # pi_k to every scorer and verifier, before the stage's clock
                "timeline_s": stage_timeline(sdir, started),
                "actor_busy_s": {name: busy[name] - busy_before.get(name, 0.0) for name in busy},
                "train_busy_s": [
                    json.loads(f.read_text())["busy_s"]
                    for f in sorted((sdir / "train").glob("rank*_busy.json"))
                ],
            }
            (sdir / "stage_manifest.json").write_text(json.dumps(manifest, indent=2))
            policy_dir, version = Path(spec.out_model_dir), k + 1
            if on_policy:
                actor_version = version
    finally:  # also when a stage failed: no actor or transport outlives the run
        _release(groups, actors, retriever)

    report = write_report(cfg.run_dir)
    return {
        "stages": len(cfg.stages.seq_lens),
        "new_work": True,
        "final_model": str(policy_dir),
        "report": str(report),
        "broadcasts": broadcasts,
    }
