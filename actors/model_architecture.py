"""What fixes a checkpoint's computation besides its weights: backends compare it to decide
whether a new checkpoint can be loaded in place or needs a rebuilt model / restarted engine."""

from __future__ import annotations

# config keys that do not change what a model computes (bookkeeping, and the dtype the backend
# chooses itself): two checkpoints of one architecture differ in these, e.g. `_name_or_path`.
_BOOKKEEPING_KEYS = {"transformers_version", "torch_dtype", "dtype", "architectures"}


def architecture(config: dict) -> dict:
    """The part of an HF config dict that fixes the computation besides the weights."""
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in _BOOKKEEPING_KEYS}
