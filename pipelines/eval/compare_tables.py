"""The compare report's tables that need more than a mean per cell: loss gaps in and out of
sample, PolicyLong paired with each method by seed, and how much on-policy screening moved
(written into compare.md by pipelines/eval/compare_report.py)."""

from __future__ import annotations

from pipelines.eval.compare_stats import interval, paired


def by_method(results: dict, methods: list[str]) -> dict[str, list[dict]]:
    return {m: [r for r in results.values() if r.get("method") == m] for m in methods}


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def cell(values: list[float], digits: int = 2) -> str:
    return interval(values).cell(digits)


def loss_gap_sections(results: dict, methods: list[str], stages: int) -> list[str]:
    runs = by_method(results, methods)
    rows = []
    for m, rs in runs.items():
        cells = []
        for k in range(stages):
            before = [r["loss_gap"]["in_sample"][k]["pi_k"]["gap"] for r in rs]
            after = [r["loss_gap"]["in_sample"][k]["pi_k+1"]["gap"] for r in rs]
            cells.append(f"{cell(before, 3)} / {cell(after, 3)}")
        rows.append([m, *cells])
    lines = [
        "## Loss gap per stage, in sample (nats/token)",
        "",
        "Mean NLL of the seed document alone minus with its assembled context "
        "(pipelines/eval/loss_gap.py), "
        "on each stage's first training samples in commit order, under "
        "the checkpoint the stage started from (pi_k) and the one trained on it (pi_k+1). "
        "PolicyLong's stage k was built by pi_k; every other method's by pi_0.",
        "",
        *table(["method", *[f"stage {k}: pi_{k} / pi_{k + 1}" for k in range(stages)]], rows),
        "",
    ]
    heldout = [r for rs in runs.values() for r in rs if r["loss_gap"].get("heldout")]
    if not heldout:
        return lines
    rows = []
    for m, rs in runs.items():
        cells = []
        for k in range(stages):
            at_k = [r["loss_gap"]["heldout"][k][f"pi_{k}"]["gap"] for r in rs]
            final = [r["loss_gap"]["heldout"][k][f"pi_{stages}"]["gap"] for r in rs]
            cells.append(f"{cell(at_k, 3)} / {cell(final, 3)}")
        rows.append([m, *cells])
    return lines + [
        "## Loss gap per stage, out of sample (nats/token)",
        "",
        "The same gap on samples each method's own construction built at stage k from held-out "
        "documents (never trained on), under pi_k (the checkpoint of that stage) and under the "
        f"final checkpoint pi_{stages}; cells mean ± 95% interval over seeds.",
        "",
        *table(["method", *[f"stage {k}: pi_{k} / pi_{stages}" for k in range(stages)]], rows),
        "",
    ]


def paired_section(results: dict, methods: list[str], lengths, pick, stages: int) -> list[str]:
    """PolicyLong minus each method, paired by seed: eval scores per length and the out-of-sample
    loss gap of the last stage under the final checkpoints."""
    runs = by_method(results, methods)
    if not runs.get("policylong"):
        return []

    def per_seed(rs, get) -> dict[int, float]:
        return {r["seed"]: v for r in rs if (v := get(r)) is not None}

    header = ["policylong minus", *map(str, lengths)]
    has_gap = all(r["loss_gap"].get("heldout") for rs in runs.values() for r in rs)
    if has_gap:
        header.append(f"held-out loss gap, stage {stages - 1}")
    rows = []
    for m, rs in runs.items():
        if m == "policylong":
            continue
        cells = [
            paired(per_seed(runs["policylong"], lambda r, n=n: pick(r["eval"], n)),
                   per_seed(rs, lambda r, n=n: pick(r["eval"], n))).cell()
            for n in map(str, lengths)
        ]  # fmt: skip
        if has_gap:
            gap = lambda r: r["loss_gap"]["heldout"][-1][f"pi_{stages}"]["gap"]  # noqa: E731
            cells.append(paired(per_seed(runs["policylong"], gap), per_seed(rs, gap)).cell())
        rows.append([m, *cells])
    return [
        "## PolicyLong minus each method, paired by seed",
        "",
        "Mean difference over the seeds both ran (same pi_0, same seed documents, same "
        "evaluation items) ± its 95% interval, and the paired t-test's p-value. Likelihood score "
        "averaged over tasks per length; loss gap in nats/token.",
        "",
        *table(header, rows),
        "",
    ]


def shift_section(results: dict) -> list[str]:
    shifts = [r for key, r in results.items() if key.startswith("shift-seed")]
    if not shifts:
        return []
    rows = []
    for k in sorted({s["stage"] for r in shifts for s in r["stages"]}):
        at = [s for r in shifts for s in r["stages"] if s["stage"] == k]
        r_k = [s["r_shift"]["r_pi_k_quantiles"][1] for s in at if s["r_shift"]["candidates"]]
        r_0 = [s["r_shift"]["r_pi_0_quantiles"][1] for s in at if s["r_shift"]["candidates"]]
        changed = [s["r_shift"]["label_changed"] for s in at if s["r_shift"]["candidates"]]
        rows.append([
            str(k), cell([s["jaccard"] for s in at]), cell([s["anchors_pi_k"] for s in at], 0),
            cell([s["anchors_pi_0"] for s in at], 0), cell(r_k, 3), cell(r_0, 3), cell(changed),
        ])  # fmt: skip
    return [
        "## How much on-policy screening changes",
        "",
        "PolicyLong's stage k (pi_k) against its static ablation (pi_0) on the same seed "
        "documents (pipelines/eval/onpolicy_shift.py): "
        "the Jaccard index of the anchors each selected, "
        "and the median r of PolicyLong's own candidates under pi_k and recomputed under pi_0, "
        "with the share whose label (positive / negative / discarded) would change. A Jaccard "
        "near 1 and equal medians mean the updated policy would have chosen the same data.",
        "",
        *table(
            [
                "stage",
                "anchor Jaccard",
                "anchors pi_k",
                "anchors pi_0",
                "median r pi_k",
                "median r pi_0",
                "label changed",
            ],
            rows,
        ),  # fmt: skip
        "",
    ]
