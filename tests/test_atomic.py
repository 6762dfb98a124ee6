"""The one write-then-rename helper (pipelines/core/atomic.py): an output appears complete or not
at all, and a failed write leaves the previous one as it was."""

from __future__ import annotations

import json

import pytest

from pipelines.core.atomic import replaced_atomically, write_json_atomic


def test_a_failed_write_leaves_the_previous_file_untouched(tmp_path):
    out = tmp_path / "eval.json"
    write_json_atomic(out, {"v": 1})
    with pytest.raises(RuntimeError), replaced_atomically(out) as tmp:
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("killed mid-write")
    assert json.loads(out.read_text()) == {"v": 1}


def test_a_folder_is_replaced_whole_and_a_stale_temporary_is_cleared(tmp_path):
    out = tmp_path / "model"
    (out).mkdir()
    (out / "old.bin").write_text("old")
    stale = tmp_path / "model.tmp"
    stale.mkdir()
    (stale / "half.bin").write_text("from a killed run")
    with replaced_atomically(out) as tmp:
        assert not tmp.exists()  # the killed run's leftovers are gone
        tmp.mkdir()
        (tmp / "new.bin").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.bin"]
    assert not stale.exists()
