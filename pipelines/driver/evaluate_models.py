"""`policylong probe` and `policylong eval` below the command line: probe or evaluate one or
more model directories against the run's corpus, and write what they found.

    probe_models     the long-copy probe (pipelines/eval/probe.py) -> probe.json, probe.png
    evaluate_models  the RULER-style suite (pipelines/eval/evaluate.py) -> eval.json per model
    harness_models   lm-evaluation-harness's RULER tasks (pipelines/eval/eval_harness.py)
"""

from __future__ import annotations

from pathlib import Path

from pipelines.core.atomic import write_json_atomic
from pipelines.core.config import Config


def corpus_dir_of(cfg: Config) -> Path:
    """The run's ingested corpus (ingested now when the run has none yet)."""
    corpus_dir = cfg.run_dir / "corpus"
    if (corpus_dir / "manifest.json").is_file():
        return corpus_dir
    from cluster.runtime import init_ray
    from pipelines.world.world import ensure_corpus

    init_ray(cfg.cluster)
    return ensure_corpus(cfg)


def probe_models(
    cfg: Config, model_dirs: list[str], distances: list[int], samples: int, seed: int, out: Path
) -> dict:
    """Every model's long-copy gain at `distances` on the same samples -> out/probe.json."""
    from pipelines.eval.probe import check_distances, plot_gains, probe_model

    for model_dir in model_dirs:
        check_distances(distances, model_dir)  # before any loading: one line, exit code 2
    corpus_dir = corpus_dir_of(cfg)
    results = [
        probe_model(
            model_dir, corpus_dir, distances, tokenizer_dir=cfg.tokenizer.path or None,
            samples=samples, seed=seed, heldout_context=cfg.pretrain.seq_len,
            heldout_tokens=cfg.pretrain.eval_tokens,
        )
        for model_dir in model_dirs
    ]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "probe.json", {"models": results}, indent=2)
    plot_gains(results, out / "probe.png")
    return {"out": str(out), "models": results}


def _eval_target(out: Path, model_dir, models: int) -> Path:
    """Where one model's eval.json goes: `out`, or its own subfolder when several are given."""
    return out / Path(model_dir).resolve().name if models > 1 else out


def evaluate_models(cfg: Config, model_dirs: list[str], out: Path) -> dict:
    """The config's eval suite on every model: {"out", "models": {dir: average, heldout_ppl}}."""
    from pipelines.eval.evaluate import evaluate_model

    corpus_dir = corpus_dir_of(cfg)
    models = {}
    for model_dir in model_dirs:
        r = evaluate_model(
            model_dir, corpus_dir, cfg.eval, _eval_target(out, model_dir, len(model_dirs)),
            tokenizer_dir=cfg.tokenizer.path or None, heldout_context=cfg.pretrain.seq_len,
            heldout_tokens=cfg.pretrain.eval_tokens,
        )  # fmt: skip
        models[str(model_dir)] = {"average": r["average"], "heldout_ppl": r["heldout_ppl"]}
    return {"out": str(out), "models": models}


def harness_models(cfg: Config, model_dirs: list[str], out: Path) -> dict:
    """lm-eval's RULER tasks (eval.harness_tasks) at eval.lengths, eval.samples per task and
    length, into each model's eval.json."""
    from pipelines.eval.eval_harness import run_harness
    from pipelines.eval.probe import max_positions

    results = {}
    for model_dir in model_dirs:
        target = _eval_target(out, model_dir, len(model_dirs))
        lengths = [n for n in cfg.eval.lengths if n <= max_positions(model_dir)]
        got = run_harness(model_dir, cfg.eval.harness_tasks, lengths, cfg.eval.samples, target)
        results[str(model_dir)] = got["tasks"]
    return {"out": str(out), "harness": "lm-eval", "models": results}
