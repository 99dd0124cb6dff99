"""Atomic writes: complete files or the previous version, never half a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptlab.fileio import atomic_directory, atomic_open, atomic_path, atomic_write_text


def test_write_text_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "config.yaml"
    atomic_write_text(target, "a: 1\n")
    atomic_write_text(target, "a: 2\n")
    assert target.read_text() == "a: 2\n"
    assert [p.name for p in target.parent.iterdir()] == ["config.yaml"]


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(OSError, match="disk full"), atomic_open(target) as f:
        f.write("half")
        raise OSError(28, "disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_temporary_paths_keep_the_suffix_and_are_unique(tmp_path: Path) -> None:
    target = tmp_path / "tokens.bin"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first.suffix == second.suffix == ".bin"
        assert first != second
        first.write_bytes(b"1")
        second.write_bytes(b"2")
    assert target.read_bytes() == b"1"  # the outer writer finished last


def test_directory_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "model"
    atomic_directory(target, lambda d: (d / "a").write_text("1"))

    def fail(d: Path) -> None:
        (d / "b").write_text("2")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_directory(target, fail)
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    atomic_directory(target, lambda d: (d / "c").write_text("3"))
    assert sorted(p.name for p in target.iterdir()) == ["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with pytest.raises(FileExistsError):
        atomic_directory(target, lambda d: None, replaceable=lambda d: False)
