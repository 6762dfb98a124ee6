"""Write-then-rename: a file or folder appears complete or not at all, so a killed run never
leaves a half-written output that a rerun would trust."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def replaced_atomically(out: Path, tmp: Path | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `out` (a stale one removed) to write a file or a folder
    into; when the block succeeds, it replaces `out`. When it raises, `out` is untouched."""
    out = Path(out)
    tmp = Path(tmp) if tmp is not None else out.with_name(out.name + ".tmp")
    _remove(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    yield tmp
    if out.is_dir() and not out.is_symlink():
        shutil.rmtree(out)  # a folder cannot be replaced by rename while it exists
    tmp.replace(out)


def write_text_atomic(out: Path, text: str) -> None:
    with replaced_atomically(out) as tmp:
        tmp.write_text(text)


def write_json_atomic(out: Path, obj, indent: int | None = None) -> None:
    write_text_atomic(out, json.dumps(obj, indent=indent))
