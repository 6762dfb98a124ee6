"""`policylong compare` (`make compare`): PolicyLong against its baselines, measured.

Every method in eval.methods runs from the same pi_0, tokenizer, index, seq_len/RoPE schedule,
token budget and learning-rate curve (the profile's; only stages.method and run.seed change),
once per seed. Then each final checkpoint (and pi_0) goes through the evaluation suite
(pipelines/eval/evaluate.py) and each stage's loss gap is measured (pipelines/eval/loss_gap.py).

    <output_dir>/<name>-compare/
        pi0/eval/                      pi_0's evaluation
        <method>-seed<s>/              a normal run directory (stages, report.md) + eval/
        compare.md, compare.png, compare.json
    eval.results_dir/                  one small JSON per finished run (and pi_0, and the
        <method>-seed<s>.json          on-policy shift per seed): what the table is built
        onpolicy_shift-seed<s>.json    from; kept in git for the tiny compare

Everything is resumable: a run whose results file exists is not run again (on this machine or
any other), and a finished run, evaluation or loss gap under runs/ is reused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from pipelines.core.atomic import write_json_atomic
from pipelines.core.config import Config, config_to_yaml

log = logging.getLogger(__name__)


def compare_dir(cfg: Config) -> Path:
    return Path(cfg.run.output_dir) / f"{cfg.run.name}-compare"


def method_config(cfg: Config, method: str, seed: int) -> Config:
    run = dataclasses.replace(
        cfg.run, output_dir=str(compare_dir(cfg)), name=f"{method}-seed{seed}", seed=seed
    )
    stages = dataclasses.replace(cfg.stages, method=method)
    return dataclasses.replace(cfg, run=run, stages=stages)


def _run_method(rcfg: Config, corpus_dir: Path) -> float | None:
    """Run (or resume) one method; its end-to-end wall seconds, kept from the run that did it
    (None when it was resumed: then only the stage manifests' walls are complete)."""
    from pipelines.driver.run import run

    rcfg.run_dir.mkdir(parents=True, exist_ok=True)
    shared = rcfg.run_dir / "corpus"
    if not shared.exists():  # every run reads the one ingested corpus (the same held-out split)
        shared.symlink_to(Path(corpus_dir).resolve(), target_is_directory=True)
    stamp = rcfg.run_dir / "compare_wall.json"
    fresh = not (rcfg.run_dir / "stages").exists()  # a resumed run's wall would be partial
    start = time.perf_counter()
    result = run(rcfg)
    if result["new_work"] or not stamp.is_file():
        wall = round(time.perf_counter() - start, 1) if fresh else None
        stamp.write_text(json.dumps({"run_wall_s": wall, "resumed": not fresh}))
    return json.loads(stamp.read_text())["run_wall_s"]


def _cost(rcfg: Config, run_wall_s: float | None) -> dict:
    """Where a run's time went, from its stage manifests."""
    from pipelines.driver.stage_driver import stage_dir

    manifests = [
        json.loads((stage_dir(rcfg, k) / "stage_manifest.json").read_text())
        for k in range(len(rcfg.stages.seq_lens))
    ]

    def busy(prefix: str) -> float:
        return sum(
            v for m in manifests for a, v in m["actor_busy_s"].items() if a.startswith(prefix)
        )

    return {
        "run_wall_s": run_wall_s,
        "stages_wall_s": round(sum(m["wall_s"] for m in manifests), 1),
        "screen_busy_s": round(busy("scorer"), 1),
        "verify_busy_s": round(busy("verifier"), 1),
        "broadcast_s": round(
            sum((m.get("broadcast") or {}).get("broadcast_s", 0.0) for m in manifests), 2
        ),  # fmt: skip
        "train_busy_s": round(sum(max(m["train_busy_s"] or [0.0]) for m in manifests), 1),
        "samples": sum(m["construction"].get("samples", 0) for m in manifests),
    }


def _evaluate(cfg: Config, model_dir: Path, corpus_dir: Path, out_dir: Path) -> dict:
    from pipelines.eval.evaluate import evaluate_model

    return evaluate_model(
        model_dir, corpus_dir, cfg.eval, out_dir, tokenizer_dir=cfg.tokenizer.path or None,
        heldout_context=cfg.pretrain.seq_len, heldout_tokens=cfg.pretrain.eval_tokens,
    )  # fmt: skip


def results_dir(cfg: Config) -> Path:
    """Each finished run's small results, one JSON file a run (kept in git for the tiny
    compare: docs/results/), from which the table is rebuilt without runs/."""
    return Path(cfg.eval.results_dir) if cfg.eval.results_dir else compare_dir(cfg) / "results"


def _loss_gaps(rcfg: Config, pi0_dir: Path) -> dict:
    """In sample: each stage's first samples under pi_k and pi_{k+1}. Out of sample: each
    stage's held-out samples (eval.heldout_gap_samples) under every checkpoint of the run."""
    from pipelines.driver.stage_driver import stage_dir
    from pipelines.eval.loss_gap import ensure_heldout_loss_gaps, ensure_stage_loss_gap

    n_stages = len(rcfg.stages.seq_lens)
    checkpoints = {"pi_0": pi0_dir} | {
        f"pi_{k + 1}": stage_dir(rcfg, k) / "model" for k in range(n_stages)
    }
    in_sample, heldout, before = [], [], pi0_dir
    for k in range(n_stages):
        sdir = stage_dir(rcfg, k)
        in_sample.append(ensure_stage_loss_gap(sdir, before, rcfg.eval.loss_gap_samples))
        before = sdir / "model"
        if rcfg.eval.heldout_gap_samples:
            heldout.append(
                ensure_heldout_loss_gaps(sdir, checkpoints, rcfg.eval.heldout_gap_samples)
            )
    return {"in_sample": in_sample, "heldout": heldout}


def _stage_summaries(rcfg: Config) -> list[dict]:
    from pipelines.driver.stage_driver import stage_dir

    out = []
    for k in range(len(rcfg.stages.seq_lens)):
        m = json.loads((stage_dir(rcfg, k) / "stage_manifest.json").read_text())
        keys = ("stage", "seq_len", "rope_theta", "policy_version_used", "construction")
        out.append({key: m.get(key) for key in keys})
    return out


def _onpolicy_shift(cfg: Config, seed: int, pi0: Path, world) -> list[dict] | None:
    """PolicyLong vs its static ablation on one seed (pipelines/eval/onpolicy_shift.py), per stage
    k >= 1; None unless both runs are on this machine."""
    from pipelines.core.index_format import chunk_column
    from pipelines.driver.stage_driver import stage_dir
    from pipelines.eval.onpolicy_shift import anchor_overlap, r_shift
    from pipelines.steps.screen import tokenize_docs
    from pipelines.world.build_index import cached_index_dir
    from pipelines.world.ingest import read_docs
    from pipelines.world.tokenizer import load_tokenizer

    pl, st = method_config(cfg, "policylong", seed), method_config(cfg, "policylong_static", seed)
    n_stages = len(cfg.stages.seq_lens)
    if not all((stage_dir(c, n_stages - 1) / "stage_manifest.json").is_file() for c in (pl, st)):
        return None
    tok_dir = Path(cfg.tokenizer.path or world.model_dir)
    tok = load_tokenizer(tok_dir)
    docs = tokenize_docs(tok, read_docs(world.corpus_dir, "train"), cfg.screen.max_doc_tokens)
    ids = {d["doc_id"]: d["input_ids"] for d in docs}
    chunks = chunk_column(
        cached_index_dir(cfg.index, cfg.run.cache_dir, world.corpus_dir, tok_dir), "input_ids"
    )
    taus = (cfg.verify.tau_pos, cfg.verify.tau_neg)
    return [
        {"stage": k, **anchor_overlap(stage_dir(pl, k), stage_dir(st, k)),
         "r_shift": r_shift(stage_dir(pl, k), pi0, ids, chunks, 64, taus)}
        for k in range(1, n_stages)
    ]  # fmt: skip


def _finished_run(cfg: Config, method: str, seed: int, pi0: Path, world) -> dict:
    """Run (or resume) one method and measure it: cost, loss gaps, stage summaries, eval."""
    from pipelines.driver.stage_driver import stage_dir

    rcfg = method_config(cfg, method, seed)
    wall = _run_method(rcfg, world.corpus_dir)
    final = stage_dir(rcfg, len(rcfg.stages.seq_lens) - 1) / "model"
    return {
        "method": method,
        "seed": seed,
        "cost": _cost(rcfg, wall),
        "loss_gap": _loss_gaps(rcfg, pi0),
        "stages": _stage_summaries(rcfg),
        "eval": _evaluate(cfg, final, world.corpus_dir, rcfg.run_dir / "eval"),
    }


def _kept(path: Path, make) -> dict:
    """The JSON at path, or make() written there first (atomically)."""
    if not path.is_file():
        write_json_atomic(path, make(), indent=1)
    return json.loads(path.read_text())


def compare(cfg: Config, seeds: list[int]) -> dict:
    from cluster.runtime import init_ray
    from pipelines.eval.compare_report import write_compare
    from pipelines.world.world import ensure_world

    out, kept = compare_dir(cfg), results_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(config_to_yaml(cfg))
    init_ray(cfg.cluster)
    world = ensure_world(cfg)  # pi_0 exists before any run: every method and seed shares it
    pi0 = Path(world.model_dir)
    results = {
        "pi_0": _kept(kept / "pi0.json", lambda: {
            "eval": _evaluate(cfg, pi0, world.corpus_dir, out / "pi0" / "eval")}),
    }  # fmt: skip
    runs = [(m, s) for s in seeds for m in cfg.eval.methods]
    for i, (method, seed) in enumerate(runs, 1):
        result = _kept(
            kept / f"{method}-seed{seed}.json",
            lambda m=method, s=seed: _finished_run(cfg, m, s, pi0, world),
        )
        results[f"{method}-seed{seed}"] = result
        avg = result["eval"]["average"]
        log.info(
            "compare %d/%d: %s seed %d done: likelihood %s",
            i, len(runs), method, seed,
            " ".join(f"{n}:{v['likelihood']:.2f}" for n, v in avg.items()),
        )  # fmt: skip
    for seed in seeds:
        path = kept / f"onpolicy_shift-seed{seed}.json"
        if not path.is_file() and (shift := _onpolicy_shift(cfg, seed, pi0, world)) is not None:
            _kept(path, lambda s=seed, x=shift: {"seed": s, "stages": x})
        if path.is_file():
            results[f"shift-seed{seed}"] = json.loads(path.read_text())
    (out / "compare.json").write_text(json.dumps(results, indent=2))
    md, png = write_compare(cfg, seeds, results, out, pi0)
    return {"compare_md": str(md), "compare_png": str(png), "runs": len(runs)}
