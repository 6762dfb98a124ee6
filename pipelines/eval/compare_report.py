"""compare.md and compare.png: the methods side by side (written by pipelines/driver/compare.py)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipelines.core.config import Config  # noqa: E402
from pipelines.eval.compare_stats import interval  # noqa: E402
from pipelines.eval.compare_tables import (  # noqa: E402
    by_method,
    loss_gap_sections,
    paired_section,
    shift_section,
    table,
)
from pipelines.eval.compare_tables import cell as _cell  # noqa: E402

_by_method, _table = by_method, table


def _score_table(results, methods, lengths, pick) -> list[str]:
    """method x length; pick(eval_json, length) -> value or None."""
    groups = {"pi_0": [results["pi_0"]], **_by_method(results, methods)}
    rows = []
    for name, runs in groups.items():
        cells = []
        for n in map(str, lengths):
            vals = [v for r in runs if (v := pick(r["eval"], n)) is not None]
            cells.append(_cell(vals))
        rows.append([name, *cells])
    return _table(["model", *map(str, lengths)], rows)


def _avg(key: str):
    return lambda ev, n: ev["average"].get(n, {}).get(key)


def _task(task: str, key: str):
    return lambda ev, n: ev["tasks"].get(task, {}).get(n, {}).get(key)


def write_compare(cfg: Config, seeds, results: dict, out: Path, pi0: Path) -> tuple[Path, Path]:
    methods, e = cfg.eval.methods, cfg.eval
    lengths = results["pi_0"]["eval"]["lengths"]
    n_stages = len(cfg.stages.seq_lens)
    lines = [
        *_header(cfg, seeds, pi0, lengths),
        "## Likelihood score, averaged over tasks",
        "",
        *_score_table(results, methods, lengths, _avg("likelihood")),
        "",
        "## Exact match, averaged over tasks",
        "",
        *_score_table(results, methods, lengths, _avg("exact")),
        "",
        "## Long-copy gain (nats/token; span repeated length - 24 tokens back)",
        "",
        *_score_table(
            results, methods, lengths, lambda ev, n: ev["long_copy_gain"].get(str(int(n) - 24))
        ),  # fmt: skip
        "",
        *_perplexity_section(results, methods, cfg.pretrain.seq_len),
        *paired_section(results, methods, lengths, _avg("likelihood"), n_stages),
        *loss_gap_sections(results, methods, n_stages),
        *shift_section(results),
        *_cost_section(results, methods),
        *_per_task_section(results, methods, e.tasks, lengths),
    ]
    md = out / "compare.md"
    md.write_text("\n".join(lines) + "\n")
    return md, _plot(results, methods, lengths, e.options, out / "compare.png")


def _header(cfg: Config, seeds, pi0: Path, lengths) -> list[str]:
    e = cfg.eval
    return [
        "# PolicyLong vs baselines",
        "",
        f"Every method started from the same pi_0 (`{pi0}`) and tokenizer, with seq_lens "
        f"{cfg.stages.seq_lens}, RoPE bases {cfg.stages.rope_thetas}, {cfg.stages.tokens_per_stage}"
        f" tokens per stage, lr {cfg.train.lr} ({cfg.train.schedule}, warm-up ratio "
        f"{cfg.train.warmup_ratio}); seeds {list(seeds)} (cells: mean ± the 95% t-interval "
        "over seeds; a single seed shows its value alone).",
        "",
        f"Evaluation (pipelines/eval/evaluate.py): "
        f"tasks {', '.join(e.tasks)}; {e.samples} samples per "
        f"task and length; likelihood score = gold answer ranks first among {e.options} "
        f"(chance {1 / e.options:.2f}); exact = greedy continuation contains the answer.",
        "",
        *_extrapolation_line(lengths, max(cfg.stages.seq_lens)),
    ]


def _perplexity_section(results: dict, methods, seq_len: int) -> list[str]:
    return [
        "## Short-context held-out perplexity",
        "",
        *_table(
            ["model", f"ppl at {seq_len}"],
            [["pi_0", _cell([results["pi_0"]["eval"]["heldout_ppl"]], 1)]]
            + [
                [m, _cell([r["eval"]["heldout_ppl"] for r in runs], 1)]
                for m, runs in _by_method(results, methods).items()
            ],  # fmt: skip
        ),
        "",
    ]


def _per_task_section(results: dict, methods, tasks, lengths) -> list[str]:
    lines = ["## Per task (likelihood / exact)", ""]
    for task in tasks:
        lines += [f"### {task}", ""]
        rows = []
        for name, runs in {"pi_0": [results["pi_0"]], **_by_method(results, methods)}.items():
            cells = []
            for n in map(str, lengths):
                lik = [
                    v for r in runs if (v := _task(task, "likelihood")(r["eval"], n)) is not None
                ]
                ex = [v for r in runs if (v := _task(task, "exact")(r["eval"], n)) is not None]
                cells.append(f"{_cell(lik)} / {_cell(ex)}")
            rows.append([name, *cells])
        lines += [*_table(["model", *map(str, lengths)], rows), ""]
    return lines


def _extrapolation_line(lengths, longest: int) -> list[str]:
    beyond = [n for n in lengths if int(n) > longest]
    if not beyond:
        return []
    return [
        f"Lengths {', '.join(map(str, beyond))} are past the longest trained stage ({longest}): "
        "they measure extrapolation, not what the training taught.",
        "",
    ]


def _cost_section(results, methods) -> list[str]:
    keys = ["run_wall_s", "stages_wall_s", "screen_busy_s", "verify_busy_s", "broadcast_s",
            "train_busy_s", "samples"]  # fmt: skip
    runs = _by_method(results, methods)
    digits = {k: 0 if k == "samples" else 1 for k in keys}
    rows = [  # run_wall_s is None for a resumed run
        [m, *[_cell([r["cost"][k] for r in rs if r["cost"][k] is not None], digits[k])
              for k in keys]]
        for m, rs in runs.items()
    ]  # fmt: skip
    lines = ["## Cost", "", *_table(["method", *keys], rows), ""]
    if runs.get("policylong") and runs.get("policylong_static"):
        # stage walls: complete even for a resumed run, and free of start-up
        pl = np.mean([r["cost"]["stages_wall_s"] for r in runs["policylong"]])
        el = np.mean([r["cost"]["stages_wall_s"] for r in runs["policylong_static"]])
        parts = ("screen_busy_s", "verify_busy_s", "broadcast_s", "train_busy_s")
        diff = {
            k: np.mean([r["cost"][k] for r in runs["policylong"]])
            - np.mean([r["cost"][k] for r in runs["policylong_static"]])
            for k in parts
        }
        lines += [
            f"Cost of being on-policy: PolicyLong's stage wall time is {pl / el:.2f}x "
            f"the static ablation's (same assembly, pi_0 in every stage) at equal token budget "
            f"({pl:.0f} s vs {el:.0f} s). Differences in busy seconds (PolicyLong - static): "
            + ", ".join(f"{k} {v:+.1f}" for k, v in diff.items())
            + ". Both screen and verify every stage; PolicyLong adds the broadcast of pi_k and "
            "screens with a different policy, so a difference in verify time reflects how many "
            "candidates its screening found.",
            "",
        ]
    return lines


def _plot(results, methods, lengths, options: int, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    groups = {"pi_0": [results["pi_0"]], **_by_method(results, methods)}
    panels = (
        (axes[0], _avg("likelihood"), "likelihood score (avg over tasks)"),
        (axes[1], lambda ev, n: ev["long_copy_gain"].get(str(int(n) - 24)), "long-copy gain"),
    )
    for ax, pick, label in panels:
        for name, runs in groups.items():
            xs, means, spread = [], [], []
            for n in lengths:
                vals = [v for r in runs if (v := pick(r["eval"], str(n))) is not None]
                if vals:
                    xs.append(n)
                    means.append(np.mean(vals))
                    hw = interval(vals).half_width
                    spread.append(0.0 if np.isnan(hw) else hw)
            style = {"ls": "--", "color": "#777"} if name == "pi_0" else {}
            ax.errorbar(xs, means, yerr=spread, marker="o", capsize=3, label=name, **style)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.minorticks_off()
        ax.set(xlabel="context length (tokens)", ylabel=label)
    axes[0].axhline(1 / options, color="#bbb", lw=0.8, ls=":", label="chance")
    axes[0].legend(fontsize=8)
    fig.suptitle("PolicyLong vs baselines (error bars: 95% interval over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
