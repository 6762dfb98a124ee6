"""How well `policylong plan`'s FLOP model predicts measured busy time (pipelines/driver/plan.py).

Reads finished runs (default: the compare of the embedded default, runs/tiny-compare), counts
each stage's real work (documents and their tokens from the screen tables, candidates and their
verified prefixes from the candidate tables, samples trained), turns it into FLOPs with the plan's
per-token formulas, fits one seconds-per-FLOP per role on the first run, and predicts every
other run's per-stage busy seconds. Prints ONE JSON line: the fitted rates and the relative
errors per role (median, max), so the plan's GPU-hours can be read with that error in mind.

    .venv/bin/python bench/plan_calibration.py [RUN_DIR ...] [--profile CONFIG]

The runs' profile (model shape, chunk size, stages) is the first run's own config.yaml unless
--profile names one. The test suite runs it on its one-stage compare's runs, so that a change of
the run layout cannot break it unseen.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.core.config import load_config  # noqa: E402
from pipelines.driver.plan import model_shape  # noqa: E402


def _tables(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.parquet"))


def _column(path: Path, name: str) -> list:
    return pq.read_table(path, columns=[name])[name].to_pylist()


def stage_work(run: Path, k: int, shape, chunk_tokens: int) -> dict:
    """FLOPs per role and busy seconds per role of stage k of a finished run."""
    sdir = run / "stages" / f"stage_{k}"
    manifest = json.loads((sdir / "stage_manifest.json").read_text())
    screen = [
        pq.read_table(f, columns=["n_tokens"]) for f in sorted((sdir / "screen").glob("*.parquet"))
    ]
    doc_tokens = [n for t in screen for n in t["n_tokens"].to_pylist()]
    cands = [
        pq.read_table(f, columns=["positions"])
        for f in sorted((sdir / "candidates").glob("*.parquet"))
    ]
    prefixes = [chunk_tokens + max(p) + 1 for t in cands for p in t["positions"].to_pylist() if p]
    seq_len = manifest["seq_len"]
    samples = manifest["construction"]["samples"]
    head = shape.head_flops()
    flops = {
        "scorer": sum(n * (shape.forward_flops(n / 2) + head) for n in doc_tokens),
        "verifier": sum(n * shape.forward_flops(n / 2) for n in prefixes),
        "trainer": samples * seq_len * 3 * (shape.forward_flops(seq_len / 2) + head),
    }
    busy = manifest["actor_busy_s"]
    seconds = {
        "scorer": sum(v for a, v in busy.items() if a.startswith("scorer")),
        "verifier": sum(v for a, v in busy.items() if a.startswith("verifier")),
        "trainer": statistics.mean(manifest["train_busy_s"]) if manifest["train_busy_s"] else 0.0,
    }
    return {"flops": flops, "seconds": seconds}


def main(runs: list[Path], profile: str | Path = "") -> dict:
    cfg = load_config(profile or runs[0] / "config.yaml")  # model shape, chunk size, stages
    shape = model_shape(cfg)
    stages = range(len(cfg.stages.seq_lens))
    work = {r.name: [stage_work(r, k, shape, cfg.index.chunk_tokens) for k in stages] for r in runs}
    fit_on, rest = runs[0].name, [r.name for r in runs[1:]]
    rates, errors = {}, {}
    for role in ("scorer", "verifier", "trainer"):
        f = sum(s["flops"][role] for s in work[fit_on])
        t = sum(s["seconds"][role] for s in work[fit_on])
        if f <= 0 or t <= 0:
            continue
        rates[role] = t / f
        errs = [
            abs(s["flops"][role] * rates[role] - s["seconds"][role]) / s["seconds"][role]
            for name in rest
            for s in work[name]
            if s["seconds"][role] > 0
        ]
        if errs:
            errors[role] = {"median": statistics.median(errs), "max": max(errs), "n": len(errs)}
    return {
        "bench": "plan_calibration",
        "fit_on": fit_on,
        "predicted": rest,
        "seconds_per_gflop": {r: v * 1e9 for r, v in rates.items()},
        "relative_error": errors,
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path, help="finished run dirs (default: the compare's)")
    p.add_argument("--profile", default="", help="the runs' config (default: the first's own)")
    args = p.parse_args()
    if not args.runs:
        root = Path("runs/tiny-compare")
        args.runs = [root / f"{m}-seed{s}" for s in (0, 1) for m in ("policylong", "entropylong")]
    runs = [r for r in args.runs if (r / "stages").is_dir()]
    if not runs:
        sys.exit(f"error: no finished run among {[str(r) for r in args.runs]}")
    print(json.dumps(main(runs, args.profile)))
