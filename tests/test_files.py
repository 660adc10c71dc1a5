"""deepgen/files.py: a write either lands whole or leaves what was there, and never a temp file."""

from __future__ import annotations

import pytest

from deepgen.files import atomic_write


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "out" / "a.txt"
    atomic_write(target, lambda handle: handle.write("first"), binary=False)
    assert target.read_text() == "first" and target.stat().st_mode & 0o777 == 0o644

    def fail(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "first" and sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]
