"""Atomic file and directory writes: what appears at a path is always complete.

Everything gptlab writes that a later step reads back (exports, caches, configs, plots, reports)
goes through here: the content is written to a temporary sibling, flushed to disk, then renamed
into place. A crash, a full disk or Ctrl-C leaves the previous version (or nothing), never half
a file.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _sibling(target: Path, kind: str, suffix: str = "") -> Path:
    """A unique hidden name beside ``target`` (unique, so concurrent writers never share it)."""
    return target.parent / f".{target.name}.{kind}-{uuid.uuid4().hex[:8]}{suffix}"


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``.

    For writers that want a path rather than a file object (``savefig``, ``np.memmap``,
    safetensors). The temporary name keeps ``target``'s suffix so format detection still works.
    """
    target = Path(target).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "tmp", target.suffix)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(target: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """``open`` for writing, but the file appears at ``target`` only once it is complete."""
    if "b" in mode:
        encoding = None
    with atomic_path(target) as tmp, open(tmp, mode, encoding=encoding) as f:
        yield f
        f.flush()


def atomic_write_text(target: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``target`` atomically; return the path."""
    with atomic_open(target) as f:
        f.write(text)
    return Path(target).expanduser()


def atomic_directory(target: str | os.PathLike[str], write: Callable[[Path], None],
                     replaceable: Callable[[Path], bool] = lambda _: True) -> Path:
    """Run ``write(tmp_dir)``, then move ``tmp_dir`` to ``target`` (replacing an old copy).

    POSIX cannot rename a directory over a non-empty one, so an old ``target`` is first renamed
    aside and removed only once the new one is in place. ``replaceable(target)`` guards against
    deleting a directory that is not an earlier copy of the same kind (``FileExistsError``).
    """
    target = Path(target).expanduser()
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} is a file, not a directory")
    if target.is_dir() and any(target.iterdir()) and not replaceable(target):
        raise FileExistsError(f"{target} exists and holds something other than a previous copy")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = _sibling(target, "tmp"), _sibling(target, "old")
    tmp.mkdir()
    try:
        write(tmp)
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target
