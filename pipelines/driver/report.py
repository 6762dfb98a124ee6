"""Stage reports: a JSON summary and PNG plots per stage, and one Markdown page across stages
that shows the self-curriculum (how the entropy landscape, verification and counts shift).

Reads only what the stage wrote to disk, so it can be re-run on any finished run directory. The
long-copy probe (pipelines/eval/probe.py) is re-measured on pi_0 and every stage's checkpoint:
whether
each reads its context at distances up to the longest stage's sequence length.
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

from pipelines.core.atomic import write_json_atomic
from pipelines.core.config import Config, PretrainSection, load_config  # noqa: E402

# Long-copy probe distances, kept where D + span fits the longest stage (and the model).
PROBE_DISTANCES = (128, 256, 768, 1536, 3072, 6144, 12288)
EXAMPLES = 5  # example positives shown per stage


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
        if summary.get("anchors"):  # positives' anchors whose token the sample holds: 1.0
            summary["anchors_kept"] = summary["anchors_in_sample"] / summary["anchors"]
    screen = _read_dir(stage_dir / "screen", ["entropy_mean"])
    if screen:
        summary["mean_token_entropy"] = float(np.nanmean(screen["entropy_mean"]))
    cands = _read_dir(stage_dir / "candidates", ["r"])
    if cands:
        r = np.asarray(cands["r"], dtype=float)
        if np.isfinite(r).any():
            summary |= {"r_mean": float(np.nanmean(r)), "r_median": float(np.nanmedian(r))}
            summary |= {
                f"r_p{q}": float(np.nanpercentile(r, q)) for q in (10, 90, 99)
            }  # fmt: skip
    gap = stage_dir / "loss_gap.json"  # the document's NLL alone minus after its context
    if gap.is_file():
        g = json.loads(gap.read_text())
        summary |= {"loss_gap_pi_k": g["pi_k"]["gap"], "loss_gap_pi_k+1": g["pi_k+1"]["gap"]}
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


def _example_positives(stage_dir: Path, count: int = EXAMPLES) -> list[str]:
    """`count` verified positives spread evenly over their r ranking (the best, the weakest
    and between: not only the flattering ones), each with its anchor and the chunk."""
    files = sorted((stage_dir / "candidates").glob("*.parquet"))
    if not files or "anchor_text" not in pq.read_schema(files[0]).names:  # older runs: none
        return []
    t = _read_dir(stage_dir / "candidates", ["label", "r", "anchor_text", "chunk_text"])
    pos = sorted(
        (r, a, c) for lab, r, a, c in zip(*t.values(), strict=True) if lab == "positive"
    )[::-1]  # fmt: skip
    if not pos:
        return ["", "No verified positives in this stage.", ""]
    picks = sorted({round(i * (len(pos) - 1) / max(1, count - 1)) for i in range(count)})
    lines = ["", f"Example positives ({len(picks)} of {len(pos)}, best r first):", ""]
    for i in picks:
        r, anchor, chunk = pos[i]
        lines += [
            f"- r = {r:.3f}: …{_one_line(anchor)}",
            f"  - chunk: {_one_line(chunk)[:300]}",
        ]
    return lines + [""]


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def write_report(run_dir: Path, cfg: Config | None = None) -> Path:
    """Per-stage summary.json + PNGs, and run_dir/report.md across stages.

    cfg: the run's config (default: run_dir/config.yaml, which `policylong run` writes); without
    one, the long-copy probe leaves out pi_0 and scores perplexity at the default pretrain
    context."""
    if cfg is None and (run_dir / "config.yaml").is_file():
        cfg = load_config(run_dir / "config.yaml")
    stages = sorted(p for p in (run_dir / "stages").glob("stage_*") if p.is_dir())
    rows, lines = [], [f"# PolicyLong run `{run_dir.name}`", ""]
    before = _base_model_dir(cfg, run_dir / "corpus") if cfg is not None else None
    for stage_dir in stages:
        done = (stage_dir / "stage_manifest.json").is_file()
        trained = (stage_dir / "model").is_dir()  # not with stages.train false
        if cfg is not None and before is not None and done and trained:
            from pipelines.eval.loss_gap import ensure_stage_loss_gap

            ensure_stage_loss_gap(stage_dir, before, cfg.eval.loss_gap_samples)
        before = stage_dir / "model" if trained else before
        summary = stage_summary(stage_dir)
        (stage_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        rows.append(summary)
        lines += [f"## {stage_dir.name}", ""]
        lines += [f"![{png}](stages/{stage_dir.name}/{png})" for png in _plot_stage(stage_dir)]
        lines += _example_positives(stage_dir)
        lines.append("")
    if rows:
        # epoch timestamps (*_at) stay in summary.json: as table cells they read 1.796e+09
        keys = [k for k in rows[0] if k != "stage" and not k.endswith("_at")]
        lines += ["## Across stages (the self-curriculum)", ""]
        lines += ["| stage | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for row in rows:
            cells = [_fmt(row.get(k)) for k in keys]
            lines.append(f"| {row['stage']} | " + " | ".join(cells) + " |")
        if len(rows) > 1:
            lines += ["", f"![curriculum]({_plot_curriculum(run_dir, rows)})"]
    if cfg is None or cfg.stages.train:  # constructing only: no checkpoint to probe
        lines += _probe_section(run_dir, stages, cfg)
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


def _base_model_dir(cfg: Config, corpus_dir: Path) -> Path | None:
    """pi_0 of the run: model.path, else the cached base ensure_world built (None when gone)."""
    if cfg.model.path:
        return Path(cfg.model.path)
    from pipelines.world.world import base_dir, gguf_model_dir

    if cfg.model.gguf:
        return gguf_model_dir(cfg)  # cached: found again, not re-imported

    base = base_dir(cfg, corpus_dir)
    return base if (base / "config.json").is_file() else None


def _probe_targets(run_dir: Path, stages: list[Path], cfg: Config | None) -> list[dict]:
    """pi_0 and every finished stage's checkpoint, with the context each was trained at."""
    targets = []
    if cfg is not None:
        base = _base_model_dir(cfg, run_dir / "corpus")
        if base is not None:
            trained = None if cfg.model.path else cfg.pretrain.seq_len
            targets.append({"name": "pi_0", "model_dir": base, "trained_context": trained})
    for stage_dir in stages:
        manifest = stage_dir / "stage_manifest.json"
        if manifest.is_file() and (stage_dir / "model" / "config.json").is_file():
            seq_len = json.loads(manifest.read_text())["seq_len"]
            targets.append(
                {
                    "name": f"{stage_dir.name} (pi_{int(stage_dir.name.split('_')[1]) + 1})",
                    "model_dir": stage_dir / "model",
                    "trained_context": seq_len,
                }
            )
    return targets


def _probe_section(run_dir: Path, stages: list[Path], cfg: Config | None) -> list[str]:
    """Long-copy gain and held-out perplexity of every checkpoint: run_dir/probe.json, probe.png
    and a table. Every model gets the same inputs at every distance up to the longest stage."""
    from pipelines.core.long_copy import SAMPLES, SPAN
    from pipelines.eval.probe import max_positions, plot_gains, probe_model

    targets = _probe_targets(run_dir, stages, cfg)
    manifests = [s / "stage_manifest.json" for s in stages]
    seq_lens = [json.loads(m.read_text())["seq_len"] for m in manifests if m.is_file()]
    wanted = [d for d in PROBE_DISTANCES if d + SPAN <= max(seq_lens, default=0)]
    if not targets or not wanted or not (run_dir / "corpus" / "manifest.json").is_file():
        return []
    pretrain = cfg.pretrain if cfg is not None else PretrainSection()
    results = []
    for target in targets:
        limit = max_positions(target["model_dir"]) - SPAN
        result = probe_model(
            target["model_dir"],
            run_dir / "corpus",
            [d for d in wanted if d <= limit],
            tokenizer_dir=(cfg.tokenizer.path or None) if cfg is not None else None,
            seed=cfg.run.seed if cfg is not None else 0,
            heldout_context=pretrain.seq_len,
            heldout_tokens=pretrain.eval_tokens,
        )
        results.append(
            result | {"name": target["name"], "trained_context": target["trained_context"]}
        )
    write_json_atomic(run_dir / "probe.json", {"models": results}, indent=2)
    png = plot_gains(results, run_dir / "probe.png", "long-copy probe across checkpoints").name
    context = results[0]["heldout_context"]
    lines = [
        "",
        "## Long-copy probe",
        "",
        f"gain(D): how much lower the NLL (nats/token) of a {SPAN}-token held-out span is when it "
        f"also occurred D tokens earlier; {SAMPLES} samples per D, the same inputs for every "
        "model (pipelines/eval/probe.py). ~0 = the model does not read that far back. "
        f"`*` = D + {SPAN} is beyond the context the model was trained at. Held-out perplexity "
        f"at context {context}.",
        "",
        "| model | trained context | held-out ppl | " + " | ".join(f"D={d}" for d in wanted) + " |",
        "|---" * (len(wanted) + 3) + "|",
    ]
    for r in results:
        cells = []
        for d in wanted:
            gain = r["gain"].get(str(d))
            beyond = r["trained_context"] and d + SPAN > r["trained_context"]
            if gain is not None:
                gain = round(gain, 2) + 0.0  # + 0.0: no "-0.00"
            cells.append("-" if gain is None else f"{gain:.2f}" + ("*" if beyond else ""))
        trained = r["trained_context"] or "?"
        lines.append(
            f"| {r['name']} | {trained} | {r['heldout_ppl']:.4g} | " + " | ".join(cells) + " |"
        )
    return lines + ["", f"![long-copy probe]({png})"]
