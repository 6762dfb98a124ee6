"""The embedded default's pi_0, shipped: configs/tiny.yaml's base, built once by its recipe and
committed, so that a first run installs it in about a second instead of spending ~23 minutes of
2 cores on it (README). `policylong prepare-base --rebuild` rebuilds it from the recipe.

pipelines/assets/<cache dir name>/ holds the model directory (config, tokenizer, base_metrics.json)
with the weights in bfloat16 (half the bytes in git) and shipped.json: the sha256 of every file.
The folder's name is the base's cache key (pipelines/world.base_dir: the profile's tokenizer,
model and pretrain fingerprint, BASE_BUILD_VERSION and the corpus hash), so only a profile and
corpus that would build exactly this base get it; any other change builds as before.

Installing writes the weights back as float32 (what a build writes, what every loader expects)
into the cache. base_metrics.json records the build's metrics and, under "shipped", the held-out
perplexity and long-copy gain re-measured on the bfloat16-rounded weights.

    .venv/bin/python -m pipelines.world.ship_base [--config configs/tiny.yaml]   # ship the cached
    base
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from pipelines.core.errors import UserError

log = logging.getLogger(__name__)
ASSETS = Path(__file__).resolve().parents[1] / "assets"  # pipelines/assets
MANIFEST = "shipped.json"
WEIGHTS = "model.safetensors"
COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shipped_for(out: Path) -> Path | None:
    """The shipped base that stands for cache directory `out`, if there is one."""
    src = ASSETS / Path(out).name
    return src if (src / MANIFEST).is_file() else None


def verify_shipped(src: Path) -> dict:
    """shipped.json, after checking every file it lists against its sha256."""
    manifest = json.loads((src / MANIFEST).read_text())
    for name, digest in manifest["files"].items():
        if not (src / name).is_file() or _sha256(src / name) != digest:
            raise UserError(
                f"the shipped pi_0 file '{src / name}' is missing or changed (sha256): restore "
                "it from git, or rebuild with `policylong prepare-base --rebuild`"
            )
    return manifest


def install_shipped(src: Path, out: Path) -> dict:
    """Write the shipped base into cache directory `out` (float32 weights); its metrics."""
    import torch
    from safetensors.torch import load_file, save_file

    verify_shipped(src)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (*COPIED, "base_metrics.json"):
        if (src / name).is_file():
            shutil.copyfile(src / name, tmp / name)
    weights = {k: v.to(torch.float32).contiguous() for k, v in load_file(src / WEIGHTS).items()}
    save_file(weights, tmp / WEIGHTS, metadata={"format": "pt"})
    try:
        tmp.replace(out)
    except OSError:  # another process installed it first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return json.loads((out / "base_metrics.json").read_text())


def _measure(model_dir: Path, weights: dict, heldout_blocks, batch_size: int) -> dict:
    """Held-out perplexity and the long-copy gain at half the context, with `weights`."""
    import math

    from transformers import AutoModelForCausalLM

    from pipelines.core.long_copy import long_copy_gain
    from pipelines.world.base_model import mean_nll

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="float32")
    model.load_state_dict(weights, strict=False)  # lm_head is tied to the embeddings
    distance = heldout_blocks.shape[1] // 2
    gain = long_copy_gain(model, heldout_blocks.flatten().tolist(), [distance], samples=12)
    return {
        "heldout_ppl": math.exp(mean_nll(model, heldout_blocks, batch_size)),
        "long_copy_gain": {"distance": distance, **gain[distance]},
    }


def ship(model_dir: Path, heldout_blocks, batch_size: int, dest: Path) -> dict:
    """Write built base `model_dir` as a shipped base in `dest` (bfloat16 weights)."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(model_dir / WEIGHTS)
    rounded = {k: v.to(torch.bfloat16) for k, v in weights.items()}
    metrics = json.loads((model_dir / "base_metrics.json").read_text())
    metrics["shipped"] = {
        "weights_dtype": "bfloat16",
        **_measure(model_dir, {k: v.float() for k, v in rounded.items()}, heldout_blocks,
                   batch_size),
    }  # fmt: skip
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    save_file(rounded, dest / WEIGHTS, metadata={"format": "pt"})
    for name in COPIED:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, dest / name)
    (dest / "base_metrics.json").write_text(json.dumps(metrics, indent=2))
    files = sorted(p.name for p in dest.iterdir())
    manifest = {"cache_dir": dest.name, "files": {n: _sha256(dest / n) for n in files}}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return metrics
