"""A stage's committed samples as a dataset a researcher loads, with a card saying where they
came from:

    <run dir>/dataset/stage_<k>/data-00000.parquet   one row per sample, decoded text included
    <run dir>/dataset/stage_<k>/README.md            the card: provenance, counts, thresholds

    datasets.load_dataset("parquet", data_files="<run dir>/dataset/stage_0/*.parquet")

Written to a temporary folder and renamed into place, so a half-written export never looks done.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.atomic import replaced_atomically
from pipelines.core.config import Config
from pipelines.core.records import Stage, StageRecord
from pipelines.core.sample_log import SAMPLE_SCHEMA, SampleLog

REPO = Path(__file__).resolve().parents[1]


def _code_version() -> str:
    """The git commit of this code, when it runs from a checkout (a job's copy may have none)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _rows(cfg: Config, stage: Stage, sdir: Path, tokenizer) -> pa.Table:
    log = SampleLog(sdir / "samples")
    tables = [log.read(c.name) for c in log.commits()]  # commit order = training order
    table = pa.concat_tables(tables) if tables else SAMPLE_SCHEMA.empty_table()
    n = table.num_rows
    roles = [[s["role"] for s in segs] for segs in table.column("segments").to_pylist()]
    extra = {
        "text": ([tokenizer.decode(x) for x in table.column("input_ids").to_pylist()], pa.string()),
        "method": ([cfg.stages.method] * n, pa.string()),
        "seq_len": ([stage.seq_len] * n, pa.int32()),
        "rope_theta": ([stage.rope_theta] * n, pa.float64()),
        "n_positives": ([r.count("positive") for r in roles], pa.int32()),
        "n_negatives": ([r.count("negative") for r in roles], pa.int32()),
    }
    for name, (values, kind) in extra.items():
        table = table.append_column(name, pa.array(values, type=kind))
    return table


def _card(cfg: Config, stage: Stage, record: StageRecord, rows: int) -> str:
    provenance = {
        "run": cfg.run.name,
        "stage": stage.index,
        "method": cfg.stages.method,
        "seq_len": stage.seq_len,
        "rope_theta": stage.rope_theta,
        "policy_version": stage.policy_version,
        "policy_model": cfg.model.path or cfg.model.gguf or "embedded base (cache_dir/base-*)",
        "trained_after_construction": cfg.stages.train,
        "corpus": cfg.corpus.source,
        "embedder": cfg.index.embedder,
        "screen_alpha": cfg.screen.alpha,
        "tau_pos": cfg.verify.tau_pos,
        "tau_neg": cfg.verify.tau_neg,
        "samples": rows,
        "construction_counts": record.construction,
        "code_version": _code_version(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        '  data_files: "data-*.parquet"',
        "---",
        f"# {cfg.stages.method} data, run '{cfg.run.name}', stage {stage.index}",
        "",
        f"{rows} samples of exactly {stage.seq_len} tokens, built by PolicyLong on Ray: "
        "retrieved chunks first, the seed document last. `segments` gives each part's role "
        "(positive: verified to lower the policy's entropy by r >= tau_pos; negative: retrieved "
        "but r < tau_neg; filler; document), its token span and r.",
        "",
        "```python",
        'datasets.load_dataset("parquet", data_files="data-*.parquet")',
        "```",
        "",
        "## Provenance",
        "",
        "```json",
        json.dumps(provenance, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def export_stage(cfg: Config, stage: Stage, sdir: Path, tokenizer, record: StageRecord) -> Path:
    """Write stage k's dataset and card under <run dir>/dataset/stage_<k>; its folder."""
    out = cfg.run_dir / "dataset" / f"stage_{stage.index}"
    with replaced_atomically(out) as tmp:
        tmp.mkdir(parents=True)
        table = _rows(cfg, stage, sdir, tokenizer)
        if table.num_rows:  # `datasets` cannot read a 0-row Parquet file: the card says 0 samples
            pq.write_table(table, tmp / "data-00000.parquet")
        (tmp / "README.md").write_text(_card(cfg, stage, record, table.num_rows))
    return out
