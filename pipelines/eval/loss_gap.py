"""The loss gap: how much a sample's assembled context helps a model predict the seed document
it was built for.

For a sample (context pieces and the seed document's tokens: one segment last for PolicyLong,
EntropyLong and concatenation, meta-chunks spread through the sample for NExtLong), the seed
document's tokens after its first are scored twice, with everything before each of them in the
sample and with the document's own tokens alone:

    gap = mean NLL(document | document alone) - mean NLL(document | whole sample)   (nats/token)

PolicyLong's argument is that its on-policy data keeps this gap larger than static baselines do:
the context it picks is still informative to the current model. Concatenation's filler should
give ~0. The compare measures it out of sample: on samples each method's own construction built
from held-out documents (never trained on) at every stage, under every checkpoint of the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from pipelines.core.atomic import write_json_atomic

DOC_ROLES = ("document", "meta_chunk")


def stage_samples(sample_dir: Path, n: int) -> list[dict]:
    """The first n committed samples of a stage, in commit order (the same for every model)."""
    from pipelines.core.sample_log import SampleLog

    rows = []
    for c in SampleLog(sample_dir).commits():
        f = Path(sample_dir) / f"{c.name}.parquet"
        rows += pq.read_table(f, columns=["seed_doc_id", "input_ids", "segments"]).to_pylist()
        if len(rows) >= n:
            break
    return rows[:n]


def document_positions(sample: dict) -> list[int]:
    """Where the seed document's tokens are in the sample, in order."""
    return [
        seg["start"] + i
        for seg in sample["segments"]
        if seg["role"] in DOC_ROLES and seg["doc_id"] == sample["seed_doc_id"]
        for i in range(seg["length"])
    ]


@torch.no_grad()
def _nll_at(model, ids: list[int], positions: list[int]) -> float:
    """Mean NLL of ids[p] given ids[:p], over the positions (all > 0)."""
    device = next(model.parameters()).device
    logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].float()
    at = torch.tensor(positions, device=device)
    logp = F.log_softmax(logits[at - 1], dim=-1)
    target = torch.tensor([ids[p] for p in positions], device=device).unsqueeze(-1)
    return float(-logp.gather(-1, target).mean())


def sample_gap(model, sample: dict) -> float | None:
    """NLL of the document's tokens alone minus in the sample (None: under 2 tokens)."""
    pos = document_positions(sample)
    if len(pos) < 2:
        return None
    ids = list(sample["input_ids"])
    alone = _nll_at(model, [ids[p] for p in pos], list(range(1, len(pos))))
    return alone - _nll_at(model, ids, pos[1:])


def loss_gap(model, samples: list[dict]) -> dict:
    """{"gap", "gap_se", "gaps", "samples"} over the samples (gaps: one per sample, in order,
    so two models or two methods can be compared sample by sample)."""
    gaps = np.array([g for s in samples if (g := sample_gap(model, s)) is not None])
    se = float(gaps.std(ddof=1) / np.sqrt(len(gaps))) if len(gaps) > 1 else float("nan")
    return {
        "gap": round(float(gaps.mean()), 4) if len(gaps) else float("nan"),
        "gap_se": round(se, 4),
        "gaps": [round(float(g), 4) for g in gaps],
        "samples": len(gaps),
    }


def checkpoint_loss_gaps(sample_dir: Path, checkpoints: dict[str, Path], n: int) -> dict:
    """The gap of a stage's first n samples under each checkpoint ({name: model_dir})."""
    from transformers import AutoModelForCausalLM

    samples = stage_samples(sample_dir, n)
    out = {}
    for name, model_dir in checkpoints.items():
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        out[name] = loss_gap(model, samples) | {"model_dir": str(model_dir)}
    return out


def ensure_heldout_loss_gaps(stage_dir: Path, checkpoints: dict[str, Path], n: int) -> dict:
    """The stage's held-out samples' gaps under every checkpoint, measured once and kept in
    stage_dir/heldout/loss_gap.json."""
    out = Path(stage_dir) / "heldout" / "loss_gap.json"
    if out.is_file():
        kept = json.loads(out.read_text())
        if set(kept) == set(checkpoints):
            return kept
    gap = checkpoint_loss_gaps(Path(stage_dir) / "heldout" / "samples", checkpoints, n)
    write_json_atomic(out, gap, indent=2)
    return gap


def stage_loss_gap(sample_dir: Path, before_dir: Path, after_dir: Path, n: int) -> dict:
    """The gap of one stage's first n samples under pi_k (before_dir) and pi_{k+1} (after_dir)."""
    return checkpoint_loss_gaps(sample_dir, {"pi_k": before_dir, "pi_k+1": after_dir}, n)


def ensure_stage_loss_gap(stage_dir: Path, before_dir: Path, n: int) -> dict:
    """The stage's loss gap, measured once and kept in stage_dir/loss_gap.json (the stage
    report and `compare` share it)."""
    out = Path(stage_dir) / "loss_gap.json"
    if not out.is_file():
        gap = stage_loss_gap(Path(stage_dir) / "samples", before_dir, Path(stage_dir) / "model", n)
        write_json_atomic(out, gap, indent=2)
    return json.loads(out.read_text())
