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

import errno
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipelines.core.atomic import write_json_atomic
from pipelines.core.config import Config, config_to_yaml
from pipelines.core.errors import StageFailed, StepFailed, UserError, describe, in_step
from pipelines.core.records import Stage, StageCounts, StageRecord
from pipelines.driver.export_dataset import export_stage

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


@dataclass
class Policy:
    """pi_version: the checkpoint the trainer starts stage `version` from."""

    model_dir: Path
    version: int


@dataclass
class RunInputs:
    """What every stage of a run reads: the corpus as tokens, the index, the probe."""

    world: object  # pipelines.world.world.World
    tokenizer: object
    index: object  # pipelines.world.build_index.IndexBuild
    docs: list[dict]  # {doc_id, input_ids}
    heldout_docs: list[dict]  # never trained on: the compare's out-of-sample loss gap
    probe_ids: list[int]  # the weight-sync probe: the trainer's and every actor's must agree


def prepare_inputs(cfg: Config) -> RunInputs:
    """The corpus and pi_0 (made or reused), the tokenized training documents and the index."""
    from pipelines.core.index_format import rebuild_hint
    from pipelines.steps.screen import tokenize_docs
    from pipelines.world.build_index import build_index, cached_index_dir
    from pipelines.world.ingest import read_docs
    from pipelines.world.tokenizer import load_tokenizer
    from pipelines.world.world import ensure_world

    world = ensure_world(cfg)
    tokenizer_dir = Path(cfg.tokenizer.path or world.model_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    index_dir = cached_index_dir(cfg.index, cfg.run.cache_dir, world.corpus_dir, tokenizer_dir)
    embedder_cpus = cfg.resources.embedder.cpus
    index = build_index(
        index_dir, world.corpus_dir, tokenizer_dir, cfg.index, cfg.run.seed, embedder_cpus
    )
    built_with = index.manifest.get("embedder")
    if built_with != cfg.index.embedder:  # queries would be embedded in another space
        raise UserError(
            f"index '{index.index_dir}' was built with embedder '{built_with}', but "
            f"index.embedder is '{cfg.index.embedder}': {rebuild_hint(index.index_dir)}"
        )
    max_doc = cfg.screen.max_doc_tokens
    docs = tokenize_docs(tokenizer, read_docs(world.corpus_dir, "train"), max_doc)
    heldout = []
    if cfg.eval.heldout_gap_samples:
        heldout = tokenize_docs(tokenizer, read_docs(world.corpus_dir, "heldout"), max_doc)
    probe_ids = docs[0]["input_ids"][: cfg.stages.probe_tokens]
    return RunInputs(world, tokenizer, index, docs, heldout, probe_ids)


def resume_point(cfg: Config, base_dir: Path) -> tuple[int | None, Policy]:
    """The first stage without a manifest (None: all done) and the policy it starts from:
    the newest finished stage's checkpoint, else the base."""
    stages = range(len(cfg.stages.seq_lens))
    first = next((k for k in stages if not stage_complete(cfg, k)), None)
    if not first or not cfg.stages.train:  # constructing only: pi_0 in every stage
        return first, Policy(base_dir.resolve(), 0)
    model_dir = (stage_dir(cfg, first - 1) / "model").resolve()
    check_checkpoint(model_dir, first - 1, stage_dir(cfg, first - 1))
    return first, Policy(model_dir, first)


def check_checkpoint(model_dir: Path, k: int, sdir: Path) -> None:
    """A finished stage's checkpoint is whole (config and every safetensors file as long as its
    header says) before the next stage starts from it; else one line saying how to redo it."""
    redo = f"delete '{sdir}' and rerun to redo stage {k}"
    files = sorted(model_dir.glob("*.safetensors"))
    if not (model_dir / "config.json").is_file() or not files:
        raise UserError(
            f"stage {k} is marked complete but its checkpoint '{model_dir}' is missing: {redo}"
        )
    for f in files:
        size = f.stat().st_size
        with f.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            try:
                header = json.loads(fh.read(n)) if 8 + n <= size else None
            except (UnicodeDecodeError, json.JSONDecodeError):
                header = None
        ends = [
            t["data_offsets"][1] for name, t in (header or {}).items() if name != "__metadata__"
        ]
        if header is None or size != 8 + n + max(ends, default=0):
            raise UserError(
                f"stage {k}'s checkpoint file '{f}' is truncated or corrupt ({size} bytes): {redo}"
            )


@dataclass
class ConstructionOutcome:
    """How the construction thread ended: its counts, or the error that ended it."""

    counts: StageCounts | None = None
    error: Exception | None = None


def _construct(out: ConstructionOutcome, ctx, seed_docs: list[dict], budget: int) -> None:
    """The construction thread: its counts, or the error that ended it, land in `out`."""
    from pipelines.driver.construct import construct_stage

    try:
        out.counts = construct_stage(ctx, seed_docs, budget)
    except Exception as e:  # the driver reports it; a thread's exception would only be printed
        out.error = e


def _rerun_hint(sdir: Path) -> str:
    return f"committed samples are kept ({sdir / 'samples'}): fix the cause and rerun to resume"


def _train_spec(cfg: Config, stage: Stage, policy: Policy, inputs: RunInputs, budget: int):
    from pipelines.steps.train import StageTrainSpec

    sdir = stage_dir(cfg, stage.index)
    return StageTrainSpec(
        stage=stage.index,
        init_model_dir=str(policy.model_dir),
        out_model_dir=str((sdir / "model").resolve()),
        sample_log_dir=str((sdir / "samples").resolve()),
        ledger_dir=str((sdir / "train").resolve()),
        seq_len=stage.seq_len,
        rope_theta=stage.rope_theta,
        budget_samples=budget,
        train=asdict(cfg.train),
        threads=cfg.resources.torch_threads_per_actor,
        probe_ids=inputs.probe_ids,
        lm_head_chunk_tokens=cfg.screen.lm_head_chunk_tokens,
        lm_head_vocab_tile=cfg.screen.lm_head_vocab_tile,
    )


def construct_and_train(cfg: Config, ctx, seed_docs: list[dict], spec) -> StageCounts:
    """Construction in a background thread while Ray Train trains on its log; construction's
    counts. Either side failing fails the stage with the first cause, the other stopped."""
    from pipelines.steps.train import train_stage

    result = ConstructionOutcome()
    construction = threading.Thread(
        target=_construct,
        args=(result, ctx, seed_docs, spec.budget_samples),
        name=f"construct-stage-{ctx.stage.index}",
    )
    construction.start()
    try:
        with in_step("train"):
            train_stage(spec, cfg.resources.trainer)
    except StepFailed as train_error:
        ctx.stop.set()  # construction must not go on for a stage that cannot finish
        construction.join()
        cause = result.error or train_error  # the trainer stopped because of it
        raise _stage_failure(ctx, cause) from None
    except KeyboardInterrupt:  # Ctrl-C: stop constructing, keep what is committed
        ctx.stop.set()
        construction.join()
        raise
    construction.join()
    if result.error is not None:
        raise _stage_failure(ctx, result.error)
    return result.counts


def construct_only(ctx, seed_docs: list[dict], budget: int) -> StageCounts:
    """Construction alone (stages.train false); a failure ends the stage as in training."""
    from pipelines.driver.construct import construct_stage

    try:
        return construct_stage(ctx, seed_docs, budget)
    except Exception as e:  # noqa: BLE001 - every failure becomes the stage's one line
        raise _stage_failure(ctx, e) from None


def construct_heldout(ctx, heldout_docs: list[dict], n: int) -> StageCounts:
    """Up to n samples from held-out documents, built by the stage's own construction with the
    policy its actors hold now (pi_k for PolicyLong), into <stage>/heldout/: what the compare
    measures the loss gap on, out of sample. Nothing trains on them."""
    from pipelines.driver.construct import StageContext

    hctx = StageContext(ctx.cfg, ctx.stage, ctx.stage_dir / "heldout", ctx.fleet, ctx.tokenizer)
    return construct_only(hctx, heldout_docs, n)


def _stage_failure(ctx, cause: BaseException) -> Exception:
    """The one line a failed stage ends with. A full disk (or quota) is the user's to fix:
    a UserError (exit code 2); anything else is a StageFailed (exit code 1)."""
    line = f"stage {ctx.stage.index} failed in {describe(cause)}; {_rerun_hint(ctx.stage_dir)}"
    root = getattr(cause, "cause", cause)
    # pyarrow's write errors carry the errno in their text only ("[errno 28] No space ...")
    full = root.errno in (errno.ENOSPC, errno.EDQUOT) if isinstance(root, OSError) else False
    if full or "No space left on device" in str(root):
        where = f" writing '{root.filename}'" if getattr(root, "filename", None) else ""
        return UserError(f"no space left on the device{where}: free space; {line}")
    return StageFailed(line)


def write_stage_manifest(cfg: Config, stage: Stage, record: StageRecord, started: float) -> dict:
    """The stage is done once this file exists (resume skips it)."""
    sdir = stage_dir(cfg, stage.index)
    manifest = {
        "stage": stage.index,
        "seq_len": stage.seq_len,
        "rope_theta": stage.rope_theta,
        "method": cfg.stages.method,
        **asdict(record),
        "wall_s": time.time() - started,
        "timeline_s": stage_timeline(sdir, started),
        "train_busy_s": [
            json.loads(f.read_text())["busy_s"]
            for f in sorted((sdir / "train").glob("rank*_busy.json"))
        ],
    }
    write_json_atomic(sdir / "stage_manifest.json", manifest, indent=2)
    return manifest


def run_stage(cfg: Config, k: int, policy: Policy, fleet, inputs: RunInputs) -> tuple:
    """Stage k: construct its data with the fleet's policy while training pi_k on it.
    (pi_{k+1}, the stage manifest)."""
    from pipelines.driver.construct import StageContext

    sdir = stage_dir(cfg, k)
    sdir.mkdir(parents=True, exist_ok=True)
    synced = None
    if fleet.method.on_policy and policy.version > 0:  # every actor holds pi_k before stage k
        tolerance = cfg.stages.probe_tolerance
        synced = fleet.broadcast(policy.model_dir, policy.version, inputs.probe_ids, tolerance)
    stage = Stage.of(cfg.stages, k, policy.version if fleet.method.on_policy else 0)
    log.info(
        "stage %d: seq_len %d, RoPE base %.3g, policy version %d",
        k, stage.seq_len, stage.rope_theta, policy.version,
    )  # fmt: skip
    ctx = StageContext(cfg, stage, sdir, fleet, inputs.tokenizer)
    budget = max(1, cfg.stages.tokens_per_stage // stage.seq_len)
    spec = _train_spec(cfg, stage, policy, inputs, budget)
    started, busy_before = time.time(), fleet.busy_seconds()
    seeds = seed_share(cfg, inputs.docs, k)
    if cfg.stages.train:
        counts = construct_and_train(cfg, ctx, seeds, spec)
    else:
        counts = construct_only(ctx, seeds, budget)
    if not counts.samples:
        untrained = f"pi_{k + 1} = pi_{k} untrained; " if cfg.stages.train else ""
        log.warning(
            "stage %d committed no samples (%s): %slower verify.tau_pos or raise "
            "stages.seed_docs_per_stage", k, counts.to_dict(), untrained,
        )  # fmt: skip
    if cfg.eval.heldout_gap_samples:
        construct_heldout(ctx, inputs.heldout_docs, cfg.eval.heldout_gap_samples)
    busy = fleet.busy_seconds()
    record = StageRecord(
        policy_version_used=stage.policy_version,
        model_dir=spec.out_model_dir if cfg.stages.train else None,
        construction=counts.to_dict(),
        broadcast=synced,  # pi_k to every scorer and verifier, before the stage's clock
        actor_busy_s={name: busy[name] - busy_before.get(name, 0.0) for name in busy},
    )
    record.dataset = str(export_stage(cfg, stage, sdir, inputs.tokenizer, record))
    manifest = write_stage_manifest(cfg, stage, record, started)
    if not cfg.stages.train:
        return policy, manifest
    return Policy(Path(spec.out_model_dir), k + 1), manifest


def run_policylong(cfg: Config) -> dict:
    """The algorithm box (module docstring): every stage from the resume point, then the report."""
    from pipelines.core.methods import method_spec
    from pipelines.driver.fleet import Fleet
    from pipelines.driver.report import write_report

    inputs = prepare_inputs(cfg)
    n_stages = len(cfg.stages.seq_lens)
    first, policy = resume_point(cfg, Path(inputs.world.model_dir))
    # the inputs passed their checks: only now is an earlier run's record replaced
    (cfg.run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    if first is None:
        log.info("all %d stages are complete: nothing to do", n_stages)
        report = write_report(cfg.run_dir)
        return {"stages": n_stages, "new_work": False, "report": str(report)}
    method = method_spec(cfg.stages.method)
    # Off-policy methods keep pi_0 in their actors whatever stage they resume at.
    actor_policy = policy if method.on_policy else Policy(Path(inputs.world.model_dir).resolve(), 0)
    broadcasts = []
    with Fleet(cfg, method, inputs.index.index_dir) as fleet:
        fleet.start(actor_policy.model_dir, actor_policy.version)
        fleet.warmup()
        for k in range(first, n_stages):
            policy, manifest = run_stage(cfg, k, policy, fleet, inputs)
            if manifest["broadcast"]:
                broadcasts.append(manifest["broadcast"])
    report = write_report(cfg.run_dir)
    return {
        "stages": n_stages,
        "new_work": True,
        "final_model": str(policy.model_dir),
        "report": str(report),
        "broadcasts": broadcasts,
    }
