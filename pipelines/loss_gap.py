"""The loss gap of a stage: how much its assembled far context helps a model predict the seed
document it precedes.

For a sample of stage k (context pieces ..., then the seed document last), the document's tokens
2..n are scored twice, with the whole sample before them and with the document alone:

    gap = mean NLL(document | document alone) - mean NLL(document | whole sample)   (nats/token)

under pi_k (the policy that built the stage) and under pi_{k+1} (trained on it). PolicyLong's
argument is that its on-policy data keeps this gap larger than static baselines do: the context
it picks is still informative to the current model. Concatenation's filler should give ~0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F


def stage_samples(sample_dir: Path, n: int) -> list[dict]:
    """The first n committed samples of a stage (in commit order: the same for every model)."""
    rows = []
    for f in sorted(Path(sample_dir).glob("shard-*.parquet")):
        rows += pq.read_table(f, columns=["input_ids", "segments"]).to_pylist()
        if len(rows) >= n:
            break
    return rows[:n]


@torch.no_grad()
def document_nll(model, ids: list[int], doc_start: int) -> float:
    """Mean NLL of ids[doc_start + 1:] given everything before each token."""
    device = next(model.parameters()).device
    logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].float()
    logp = F.log_softmax(logits[doc_start:-1], dim=-1)
    target = torch.tensor(ids[doc_start + 1 :], device=device).unsqueeze(-1)
    return float(-logp.gather(-1, target).mean())


def loss_gap(model, samples: list[dict]) -> dict:
    """{"gap", "nll_with_context", "nll_document_alone", "gap_se"} over the samples."""
    with_ctx, alone = [], []
    for s in samples:
        doc = next(seg for seg in reversed(s["segments"]) if seg["role"] == "document")
        if doc["length"] < 2:
            continue
        ids = list(s["input_ids"])
        with_ctx.append(document_nll(model, ids, doc["start"]))
        alone.append(document_nll(model, ids[doc["start"] :], 0))
    gaps = np.array(alone) - np.array(with_ctx)
    se = float(gaps.std(ddof=1) / np.sqrt(len(gaps))) if len(gaps) > 1 else float("nan")
    return {
        "gap": round(float(gaps.mean()), 4) if len(gaps) else float("nan"),
        "gap_se": round(se, 4),
        "nll_with_context": round(float(np.mean(with_ctx)), 4) if with_ctx else float("nan"),
        "nll_document_alone": round(float(np.mean(alone)), 4) if alone else float("nan"),
        "samples": len(gaps),
    }


def stage_loss_gap(sample_dir: Path, before_dir: Path, after_dir: Path, n: int) -> dict:
    """The gap of one stage's first n samples under pi_k (before_dir) and pi_{k+1} (after_dir)."""
    from transformers import AutoModelForCausalLM

    samples = stage_samples(sample_dir, n)
    out = {}
    for name, model_dir in (("pi_k", before_dir), ("pi_k+1", after_dir)):
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        out[name] = loss_gap(model, samples)
        out[name]["model_dir"] = str(model_dir)
    return out


def ensure_stage_loss_gap(stage_dir: Path, before_dir: Path, n: int) -> dict:
    """The stage's loss gap, measured once and kept in stage_dir/loss_gap.json (the stage
    report and `compare` share it)."""
    out = Path(stage_dir) / "loss_gap.json"
    if not out.is_file():
        gap = stage_loss_gap(Path(stage_dir) / "samples", before_dir, Path(stage_dir) / "model", n)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(gap, indent=2))
        tmp.replace(out)
    return json.loads(out.read_text())
