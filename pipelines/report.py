"""Stage reports: a JSON summary and PNG plots per stage, and one Markdown page across stages
that shows the self-curriculum (how the entropy landscape, verification and counts shift).

Reads only what the stage wrote to disk, so it can be re-run on any finished run directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _read_dir(folder: Path, columns: list[str]) -> dict | None:
    """Columns of every committed per-batch Parquet file in folder (None when there is none)."""
    files = sorted(folder.glob("*.parquet"))
    if not files:
        return None
    return pa.concat_tables(pq.read_table(f, columns=columns) for f in files).to_pydict()


def stage_summary(stage_dir: Path) -> dict:
    """Counts and statistics of one finished stage, from its files."""
    summary: dict = {"stage": stage_dir.name}
    manifest = stage_dir / "samples" / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        summary |= {"samples": m["samples"], "tokens": m["tokens"], **m.get("counts", {})}
        if summary.get("documents"):
            summary["positives_per_document"] = summary["positives"] / summary["documents"]
    screen = _read_dir(stage_dir / "screen", ["entropy_mean"])
    if screen:
        summary["mean_token_entropy"] = float(np.nanmean(screen["entropy_mean"]))
    cands = _read_dir(stage_dir / "candidates", ["r"])
    if cands:
        r = np.asarray(cands["r"], dtype=float)
        if np.isfinite(r).any():
            summary |= {"r_mean": float(np.nanmean(r)), "r_median": float(np.nanmedian(r))}
    losses = [x["loss"] for x in _read_jsonl(stage_dir / "train" / "train_log.jsonl")]
    if losses:
        summary |= {"train_steps": len(losses), "loss_first": losses[0], "loss_last": losses[-1]}
    return summary


def _plot_stage(stage_dir: Path) -> list[str]:
    made = []
    screen = _read_dir(stage_dir / "screen", ["entropy"])
    if screen:
        ent = screen["entropy"]
        flat = np.concatenate([np.asarray(e, dtype=float) for e in ent]) if ent else np.zeros(0)
        flat = flat[np.isfinite(flat)]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(flat, bins=60, color="#4477aa")
        ax.set(title=f"{stage_dir.name}: token entropy under the policy", xlabel="H_t (nats)")
        made.append(_save(fig, stage_dir / "entropy_hist.png"))
    t = _read_dir(stage_dir / "candidates", ["r", "label"])
    if t:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        r = np.asarray(t["r"], dtype=float)
        axes[0].hist(r[np.isfinite(r)], bins=50, color="#228833")
        axes[0].set(title="relative entropy reduction r of candidates", xlabel="r")
        labels = ["positive", "negative", "discarded"]
        axes[1].bar(
            labels, [t["label"].count(x) for x in labels], color=["#228833", "#ee6677", "#bbb"]
        )
        axes[1].set(title="verification outcome")
        made.append(_save(fig, stage_dir / "verification.png"))
    losses = _read_jsonl(stage_dir / "train" / "train_log.jsonl")
    if losses:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([x["step"] for x in losses], [x["loss"] for x in losses])
        ax.set(title=f"{stage_dir.name}: train loss", xlabel="step", ylabel="loss")
        made.append(_save(fig, stage_dir / "train_loss.png"))
    return made


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def write_report(run_dir: Path) -> Path:
    """Per-stage summary.json + PNGs, and run_dir/report.md across stages."""
    stages = sorted(p for p in (run_dir / "stages").glob("stage_*") if p.is_dir())
    rows, lines = [], [f"# PolicyLong run `{run_dir.name}`", ""]
    for stage_dir in stages:
        summary = stage_summary(stage_dir)
        (stage_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        rows.append(summary)
        lines += [f"## {stage_dir.name}", ""]
        lines += [f"![{png}](stages/{stage_dir.name}/{png})" for png in _plot_stage(stage_dir)]
        lines.append("")
    if rows:
        keys = [k for k in rows[0] if k != "stage"]
        lines += ["## Across stages (the self-curriculum)", ""]
        lines += ["| stage | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for row in rows:
            cells = [_fmt(row.get(k)) for k in keys]
            lines.append(f"| {row['stage']} | " + " | ".join(cells) + " |")
        if len(rows) > 1:
            lines += ["", f"![curriculum]({_plot_curriculum(run_dir, rows)})"]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _plot_curriculum(run_dir: Path, rows: list[dict]) -> str:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    x = range(len(rows))
    for ax, key, title in zip(
        axes,
        ["mean_token_entropy", "r_mean", "positives_per_document"],
        ["mean token entropy", "mean r of candidates", "verified positives per document"],
        strict=True,
    ):
        ax.plot(x, [row.get(key, np.nan) for row in rows], marker="o")
        ax.set(title=title, xlabel="stage", xticks=list(x))
    return _save(fig, run_dir / "curriculum.png")
