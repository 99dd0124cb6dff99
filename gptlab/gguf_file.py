"""Reading a GGUF file (llama.cpp's format) once, for its weights and its tokenizer alike.

``gguf.GGUFReader`` parses every metadata field when it opens a file, which for a 49k-token
vocabulary takes seconds; the weights (``checkpoints.gguf``) and the tokenizer (``tokenizer.gguf``)
of one file share one parsed, memory-mapped reader per version of the file.
"""

from __future__ import annotations

import functools
from pathlib import Path

import gguf

from gptlab.errors import CheckpointError, ConfigError, first_line

GGUF_MAGIC = gguf.GGUF_MAGIC.to_bytes(4, "little")


class GGUFFileError(CheckpointError, ConfigError):
    """A GGUF file that cannot be read: wrong as a model source and as a tokenizer source alike."""


def is_gguf_file(path: str | Path) -> bool:
    """Whether ``path`` is a file that starts with GGUF's magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def read_gguf(path: str | Path) -> gguf.GGUFReader:
    """A memory-mapped reader of ``path``: a missing, foreign, truncated or damaged file is one line."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise GGUFFileError(f"{path} does not exist; pass a .gguf file (llama.cpp's format)")
    if not is_gguf_file(path):
        raise GGUFFileError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF'); "
                            "pass a model in llama.cpp's format, or one written by export_gguf")
    stat = path.stat()
    return _reader(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _reader(path: Path, mtime_ns: int, size: int) -> gguf.GGUFReader:
    try:
        return gguf.GGUFReader(path)
    except Exception as err:  # noqa: BLE001 - a damaged file makes the reader fail in many ways
        raise GGUFFileError(f"cannot read {path} as GGUF ({first_line(err)}); the file is truncated or "
                            "damaged: download or export it again") from None
