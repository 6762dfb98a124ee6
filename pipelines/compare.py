"""`policylong compare` (`make compare`): PolicyLong against its baselines, measured.

Every method in eval.methods runs from the same pi_0, tokenizer, index, seq_len/RoPE schedule,
token budget and learning-rate curve (the profile's; only stages.method and run.seed change),
once per seed. Then each final checkpoint (and pi_0) goes through the evaluation suite
(pipelines/evaluate.py) and each stage's loss gap is measured (pipelines/loss_gap.py).

    <output_dir>/<name>-compare/
        pi0/eval/                      pi_0's evaluation
        <method>-seed<s>/              a normal run directory (stages, report.md) + eval/
        compare.md, compare.png, compare.json

Everything is resumable: a finished run, evaluation or loss gap is reused by a rerun.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from pipelines.config import Config, config_to_yaml

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
    from pipelines.run import run

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


def _loss_gaps(rcfg: Config, pi0_dir: Path) -> list[dict]:
    from pipelines.loss_gap import ensure_stage_loss_gap
    from pipelines.policylong import stage_dir

    gaps, before = [], pi0_dir
    for k in range(len(rcfg.stages.seq_lens)):
        gaps.append(ensure_stage_loss_gap(stage_dir(rcfg, k), before, rcfg.eval.loss_gap_samples))
        before = stage_dir(rcfg, k) / "model"
    return gaps


def _cost(rcfg: Config, run_wall_s: float | None) -> dict:
    """Where a run's time went, from its stage manifests."""
    from pipelines.policylong import stage_dir

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
    from pipelines.evaluate import evaluate_model

    return evaluate_model(
        model_dir, corpus_dir, cfg.eval, out_dir, tokenizer_dir=cfg.tokenizer.path or None,
        heldout_context=cfg.pretrain.seq_len, heldout_tokens=cfg.pretrain.eval_tokens,
    )  # fmt: skip


def compare(cfg: Config, seeds: list[int]) -> dict:
    from cluster.runtime import init_ray
    from pipelines.compare_report import write_compare
    from pipelines.policylong import stage_dir
    from pipelines.world import ensure_world

    out = compare_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(config_to_yaml(cfg))
    init_ray(cfg.cluster)
    world = ensure_world(cfg)  # pi_0 exists before any run: every method and seed shares it
    pi0 = Path(world.model_dir)
    results = {"pi_0": {"eval": _evaluate(cfg, pi0, world.corpus_dir, out / "pi0" / "eval")}}
    runs = [(m, s) for s in seeds for m in cfg.eval.methods]
    for i, (method, seed) in enumerate(runs, 1):
        rcfg = method_config(cfg, method, seed)
        wall = _run_method(rcfg, world.corpus_dir)
        final = stage_dir(rcfg, len(rcfg.stages.seq_lens) - 1) / "model"
        result = {
            "method": method,
            "seed": seed,
            "cost": _cost(rcfg, wall),
            "loss_gap": _loss_gaps(rcfg, pi0),
            "eval": _evaluate(cfg, final, world.corpus_dir, rcfg.run_dir / "eval"),
        }
        results[f"{method}-seed{seed}"] = result
        avg = result["eval"]["average"]
        log.info(
            "compare %d/%d: %s seed %d done: likelihood %s, run %.0f s",
            i, len(runs), method, seed,
            " ".join(f"{n}:{v['likelihood']:.2f}" for n, v in avg.items()), wall or float("nan"),
        )  # fmt: skip
    (out / "compare.json").write_text(json.dumps(results, indent=2))
    md, png = write_compare(cfg, seeds, results, out, pi0)
    return {"compare_md": str(md), "compare_png": str(png), "runs": len(runs)}


def seed_spread(values: list[float]) -> tuple[float, float]:
    """Mean and half the range over seeds (0 with one seed)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float((arr.max() - arr.min()) / 2) if len(arr) > 1 else 0.0
